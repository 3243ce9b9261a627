"""kernel-adapters' own WebNLG input (`data.text_compat: kernel-adapters`): its 16 special tokens, the
segment layout with token types, labels on the text only, and evaluate.py's greedy decoding that re-reads
the whole sequence with its token types each step and stops at any of the six webnlg tokens — checked
against the reference code's functions written out here (nlg/train.py:131-153, nlg/evaluate.py:76-108)."""
from __future__ import annotations

import json
from dataclasses import replace
from itertools import chain
from pathlib import Path

import pytest
import torch
import transformers as tf

from peftlab.cli import main
from peftlab.tasks import get_task, load_splits
from peftlab.tasks.webnlg import KERNEL_TOKENS, KERNEL_WEBNLG
from peftlab.train.data import collate, encode
from peftlab.train.evaluate import predict
from test_train_support import tiny_model_dir, tiny_run_config, write_task_files


def _reference_instance(source, target, tokenizer, with_eos=True):
    """build_input_from_segments_webnlg (nlg/train.py:131-153), as the code writes it."""
    bos, eos, subject, prop, obj, tgt = tokenizer.convert_tokens_to_ids(list(KERNEL_WEBNLG))
    nlg_map = {"subject": subject, "property": prop, "object": obj}
    source_list = [[nlg_map[key]] + sample[key] for sample in source for key in ("subject", "property", "object")]
    sequence = [[bos]] + source_list + [[tgt] + target + ([eos] if with_eos else [])]
    return {"input_ids": list(chain(*sequence)),
            "token_type_ids": [bos] + list(chain(*[[s[0]] * len(s) for s in sequence[1:-1]])) + [tgt] * len(sequence[-1]),
            "lm_labels": [-100] * sum(len(s) for s in sequence[:-1]) + [-100] + sequence[-1][1:]}


def _reference_source(example, tokenizer):
    """utils.py:52-61: each string tokenized on its own."""
    encode_text = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]   # noqa: E731
    return [{k: encode_text(v) for k, v in zip(("subject", "property", "object"), triple)}
            for triple in example.extra["triples"]]


def _reference_decode(model, tokenizer, source, max_length):
    """sample_sequence (nlg/evaluate.py:76-108) with no_sample: argmax, stop at a webnlg token."""
    stops, output = tokenizer.convert_tokens_to_ids(list(KERNEL_WEBNLG)), []
    for _ in range(max_length):
        instance = _reference_instance(source, output, tokenizer, with_eos=False)
        logits = model(torch.tensor([instance["input_ids"]]),
                       token_type_ids=torch.tensor([instance["token_type_ids"]])).logits[0, -1]
        token = int(logits.argmax())
        if token in stops:
            break
        output.append(token)
    return tokenizer.decode(output, skip_special_tokens=True).replace("\n", "")


@pytest.fixture
def setup(tmp_path):
    write_task_files(tmp_path / "data")
    task = replace(get_task("webnlg"), text_compat="kernel-adapters")
    splits = load_splits(task, tmp_path / "data", policy="official")
    tokenizer = tf.AutoTokenizer.from_pretrained(str(tiny_model_dir("gpt2", tmp_path / "models")))
    tokenizer.add_special_tokens(KERNEL_TOKENS)
    return task, splits, tokenizer


def test_training_rows_are_the_codes_ids_token_types_and_labels(setup):
    task, splits, tokenizer = setup
    examples = splits["train"][:6]
    for example, item in zip(examples, encode("causal", tokenizer, task, 0, examples, 512, 64)):
        target = tokenizer(example.label, add_special_tokens=False)["input_ids"]
        expected = _reference_instance(_reference_source(example, tokenizer), target, tokenizer)
        assert (item.input_ids, item.token_type_ids, item.labels) == \
            (expected["input_ids"], expected["token_type_ids"], expected["lm_labels"])
    assert len(tokenizer) == 256 + 15          # the tiny tokenizer already had <pad>; GPT-2's gets all 16
    batch = collate("causal", encode("causal", tokenizer, task, 0, examples[:2], 512, 64), tokenizer.pad_token_id)
    assert batch["token_type_ids"].shape == batch["input_ids"].shape


def test_decoding_is_evaluate_pys_greedy_loop_with_token_types_and_webnlg_stops(setup, tmp_path):
    task, splits, tokenizer = setup
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir("gpt2", tmp_path / "models")))
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.eval()
    examples = splits["test"][:4]
    sources = [_reference_source(e, tokenizer) for e in examples]
    model.config.tie_word_embeddings = False          # an untied head, so its rows can be set apart
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with torch.no_grad():
        model.lm_head.weight[256:] = 0                # the random new rows would win at once
    free = [_reference_decode(model, tokenizer, s, 12) for s in sources]
    assert predict(model, tokenizer, "causal", task, 0, examples, 512, 12, batch_size=3) == free and all(free)
    first = _reference_instance(sources[1], [], tokenizer, with_eos=False)
    with torch.no_grad():                             # now <eos_webnlg> outscores what the model says first
        logits = model(torch.tensor([first["input_ids"]]), token_type_ids=torch.tensor([first["token_type_ids"]])).logits
        said = int(logits[0, -1].argmax())
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("<eos_webnlg>")] = 3 * model.lm_head.weight[said]
    stopped = [_reference_decode(model, tokenizer, s, 12) for s in sources]
    assert predict(model, tokenizer, "causal", task, 0, examples, 512, 12, batch_size=3) == stopped
    assert stopped[1] == "" != free[1]


def test_the_kernel_nlg_translation_runs_with_the_layout(tmp_path, capsys):
    config = tiny_run_config(tmp_path, arch="gpt2", task="webnlg", method={"method": "lora", "r": 2},
                             model={"max_target_length": 8, "resize_vocab": 271, "train_new_embeddings": True},
                             data={"text_compat": "kernel-adapters"},
                             train={"max_steps": 2, "eval_strategy": "no"})
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    assert main(["train", str(path)]) == 0
    results = json.loads((Path(config["output_dir"]) / "results.json").read_text())
    assert "bleu" in results["tasks"]["webnlg"]["test"]
