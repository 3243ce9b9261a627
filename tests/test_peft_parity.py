"""LoRA and IA3 against HF PEFT (an independent implementation): same weights -> same logits, in both
directions of the file interchange, and equal trainable counts."""
from __future__ import annotations

import peft
import pytest
import torch

import peftlab as pl
from peftlab.core import attachment_parameters
from tiny import tiny_batch, tiny_model

# Module names per architecture, given to both libraries explicitly.
LORA_TARGETS = {"t5": ["q", "v"], "bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}
IA3_TARGETS = {"t5": (["k", "v", "wo"], ["wo"]), "bert": (["key", "value", "output.dense"], ["output.dense"]),
               "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
               "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"])}
ARCHS = list(LORA_TARGETS)
LAYER_LISTS = {"t5": "block", "bert": "layer", "gpt2": "h", "llama": "layers"}   # PEFT's layers_pattern


def _peft_config(kind, arch):
    if kind == "lora":
        return peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[arch], lora_dropout=0.0,
                               init_lora_weights=False)
    targets, feedforward = IA3_TARGETS[arch]
    return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, init_ia3_weights=False)


def _ours(kind, arch):
    if kind == "lora":
        return pl.LoRA(r=4, alpha=8, target_modules=tuple(LORA_TARGETS[arch]), train_head=False)
    targets, feedforward = IA3_TARGETS[arch]
    return pl.IA3(target_modules=tuple(targets), feedforward_modules=tuple(feedforward), train_head=False)


def _logits(model, arch):
    batch = {k: v for k, v in tiny_batch(arch).items() if k != "labels"}
    if arch == "t5":
        batch["decoder_input_ids"] = torch.tensor([[0, 5, 6], [0, 7, 8]])
    with torch.no_grad():
        return model(**batch).logits


def _peft_model(kind, arch):
    model = peft.get_peft_model(tiny_model(arch), _peft_config(kind, arch))
    torch.manual_seed(5)
    with torch.no_grad():   # random, non-identity adapter weights
        for name, p in model.named_parameters():
            if "lora_" in name or "ia3_l" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "ia3_l" in name else 0.0))
    return model.eval()


@pytest.mark.parametrize("kind", ["lora", "ia3"])
@pytest.mark.parametrize("arch", ARCHS)
def test_peft_saved_adapter_loads_into_peftlab_with_equal_logits(kind, arch, tmp_path):
    reference = _peft_model(kind, arch)
    expected = _logits(reference, arch)
    reference.save_pretrained(tmp_path)
    ours = tiny_model(arch)
    pl.load(ours, tmp_path)
    torch.testing.assert_close(_logits(ours, arch), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["lora", "ia3"])
@pytest.mark.parametrize("arch", ARCHS)
def test_export_peft_loads_in_peft_with_equal_logits(kind, arch, tmp_path):
    ours = tiny_model(arch)
    pl.attach(ours, _ours(kind, arch), name="x")
    torch.manual_seed(7)
    with torch.no_grad():
        for p in attachment_parameters(ours, "x"):
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if kind == "ia3" else 0.0))
    expected = _logits(ours, arch)
    pl.export_peft(ours, "x", tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path).eval()
    torch.testing.assert_close(_logits(theirs, arch), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["lora", "ia3"])
@pytest.mark.parametrize("arch", ARCHS)
def test_trainable_counts_equal_peft(kind, arch):
    theirs = peft.get_peft_model(tiny_model(arch), _peft_config(kind, arch))
    their_count = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    ours = pl.attach(tiny_model(arch), _ours(kind, arch))
    assert pl.trainable_parameters(ours)[0] == their_count > 0


def test_slots_place_what_peft_default_targets_place_on_t5():
    """PEFT's T5 default (q, v by name) also hits cross-attention; our slots say so explicitly
    (cross-attention gets nothing unless asked, DESIGN §3)."""
    theirs = peft.get_peft_model(tiny_model("t5"), peft.LoraConfig(r=8, task_type="SEQ_2_SEQ_LM"))
    slots = ("attn.q", "attn.v", "cross_attn.q", "cross_attn.v")
    ours = pl.attach(tiny_model("t5"), pl.LoRA(r=8, slots=slots))
    their_count = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    assert pl.trainable_parameters(ours)[0] == their_count


@pytest.mark.parametrize("options", [
    {"use_rslora": True},
    {"rank_pattern": {"value": 2, "v": 2, "v_proj": 2, r"h\.1\.attn\.c_attn": 2},
     "alpha_pattern": {"query": 3.0, "q": 3.0, "q_proj": 3.0, r"h\.0\.attn\.c_attn": 3.0}},
    {"bias": "lora_only"},
    {"lora_bias": True},
    {"bias": "all"},                             # every base bias trains (LoRA.train_biases)
    {"layers_to_transform": [1]},
    {"layers_to_transform": [1], "layers_pattern": "LAYERS"},
    {"task_type": "SEQ_CLS"},                    # PEFT then saves the classifier (modules_to_save)
    {"task_type": "SEQ_CLS", "bias": "all"},
])
@pytest.mark.parametrize("arch", ARCHS)
def test_peft_lora_options_load_with_equal_logits(options, arch, tmp_path):
    if options.get("task_type") and arch != "bert":
        pytest.skip("a classification head: BERT")
    if options.get("layers_pattern"):
        options = {**options, "layers_pattern": LAYER_LISTS[arch]}
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[arch], lora_dropout=0.0,
                             init_lora_weights=False, **options)
    reference = peft.get_peft_model(tiny_model(arch), config)
    _train_three_steps(reference, arch)      # everything PEFT trains (biases, the head) moves
    reference.eval()
    expected = _logits(reference, arch)
    reference.save_pretrained(tmp_path)
    ours = tiny_model(arch)
    pl.load(ours, tmp_path)
    ours.eval()
    torch.testing.assert_close(_logits(ours, arch), expected, rtol=1e-5, atol=1e-5)


def test_peft_options_peftlab_cannot_reproduce_are_refused_in_one_line(tmp_path):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS["llama"],
                             exclude_modules=["model.layers.0.self_attn.q_proj"])
    peft.get_peft_model(tiny_model("llama"), config).save_pretrained(tmp_path)
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pl.PeftlabError, match=r"exclude_modules=.* is not supported") as err:
        pl.load(model, tmp_path)
    assert "\n" not in str(err.value) and not pl.adapters(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("unfreeze_layer_norms", [False, True])
def test_an_adapter_with_a_trained_head_exports_as_modules_to_save(unfreeze_layer_norms, tmp_path):
    ours = tiny_model("bert")
    pl.attach(ours, pl.LoRA(r=4, alpha=8, target_modules=("query", "value"), unfreeze_layer_norms=unfreeze_layer_norms),
              name="a")                                          # train_head is on by default
    _assert_peft_loads_the_export(ours, "bert", "a", tmp_path, seed=3)


@pytest.mark.parametrize("arch", ["t5", "gpt2", "llama"])
def test_seq2seq_and_causal_adapters_with_trained_lm_head_and_norms_export_as_modules_to_save(arch, tmp_path):
    config = pl.LoRA(r=4, alpha=8, target_modules=tuple(LORA_TARGETS[arch]), unfreeze_lm_head=True,
                     unfreeze_layer_norms=True)
    ours = tiny_model(arch)
    if ours.lm_head.weight is ours.get_input_embeddings().weight:     # a head tied to the input embedding
        pl.attach(ours, config, name="a")
        with pytest.raises(pl.PeftlabError, match="'lm_head.weight' is tied to"):
            pl.export_peft(ours, "a", tmp_path / "tied")
        assert not (tmp_path / "tied").exists()
        pl.detach(ours, "a")
        ours.config.tie_word_embeddings = False
        ours.lm_head.weight = torch.nn.Parameter(ours.lm_head.weight.detach().clone())
    pl.attach(ours, config, name="a")
    _assert_peft_loads_the_export(ours, arch, "a", tmp_path, seed=8, untied=True)


def test_a_bert_prompt_with_its_trained_head_exports_for_peft(tmp_path):
    ours = tiny_model("bert")
    pl.attach(ours, pl.PromptTuning(length=4), name="p")        # train_head on: the classifier trains
    _assert_peft_loads_the_export(ours, "bert", "p", tmp_path, seed=4)


@pytest.mark.parametrize("options", [{"rslora": True}, {"bias": True}, {"layers": [1]}, {"train_biases": True},
                                     {"dora": True}, {"rank_pattern": {"V": 2}, "alpha_pattern": {"Q": 3.0}}])
@pytest.mark.parametrize("arch", ARCHS)
def test_lora_options_export_for_peft_with_equal_logits(options, arch, tmp_path):
    q, v = (LORA_TARGETS[arch] * 2)[:2]
    options = {k: ({v: r for r in value.values()} if k == "rank_pattern" else
                   {q: a for a in value.values()} if k == "alpha_pattern" else value) for k, value in options.items()}
    ours = tiny_model(arch)
    pl.attach(ours, pl.LoRA(r=4, alpha=8, target_modules=tuple(LORA_TARGETS[arch]), **options), name="a")
    _assert_peft_loads_the_export(ours, arch, "a", tmp_path, seed=6)


@pytest.mark.parametrize("arch", ARCHS)
def test_dora_both_ways_with_equal_logits_and_merge(arch, tmp_path):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[arch], use_dora=True,
                             init_lora_weights=False)
    reference = peft.get_peft_model(tiny_model(arch), config)
    _train_three_steps(reference, arch)
    reference.eval()
    expected = _logits(reference, arch)
    reference.save_pretrained(tmp_path / "peft")
    ours = tiny_model(arch)
    original = {k: v.clone() for k, v in ours.state_dict().items()}
    pl.load(ours, tmp_path / "peft", name="d")
    ours.eval()
    torch.testing.assert_close(_logits(ours, arch), expected, rtol=1e-5, atol=1e-5)
    pl.export_peft(ours, "d", tmp_path / "back")
    back = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path / "back").eval()
    torch.testing.assert_close(_logits(back, arch), expected, rtol=1e-5, atol=1e-5)
    pl.merge(ours, "d")
    torch.testing.assert_close(_logits(ours, arch), expected, rtol=1e-4, atol=1e-4)
    pl.detach(ours, "d")
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in original.items())


def _train_three_steps(model, arch: str) -> None:
    """Three optimizer steps on random data (different batches), as a user's short run would."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=0.05)
    model.train()
    for seed in range(3):
        batch = tiny_batch(arch, seed=10 + seed)
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _assert_peft_loads_the_export(ours, arch: str, name: str, tmp_path, seed: int, untied=False) -> None:
    """Give every trainable tensor of `ours` a trained-looking value, export it, and check PEFT's logits."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    ours.eval()
    expected = _logits(ours, arch)
    pl.export_peft(ours, name, tmp_path)
    base = tiny_model(arch)
    if untied:
        base.config.tie_word_embeddings = False
        base.lm_head.weight = torch.nn.Parameter(base.lm_head.weight.detach().clone())
    theirs = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    torch.testing.assert_close(_logits(theirs, arch), expected, rtol=1e-5, atol=1e-5)


def test_a_failed_export_keeps_the_previous_export_whole(tmp_path, monkeypatch):
    """The two files are written in full before either replaces the old ones: a full disk while the
    config is written leaves the previous weights too, not new weights beside an old config."""
    import peftlab.peft_interop as interop
    ours = tiny_model("llama")
    pl.attach(ours, pl.LoRA(r=4, alpha=8, target_modules=("q_proj", "v_proj"), train_head=False), name="a")
    pl.export_peft(ours, "a", tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(interop.json, "dumps", full_disk)
    with torch.no_grad():
        next(p for p in ours.parameters() if p.requires_grad).add_(1.0)
    with pytest.raises(pl.PeftlabError, match="No space left on device.*previous file is unchanged"):
        pl.export_peft(ours, "a", tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
