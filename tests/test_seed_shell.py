"""The bash subset of the seeds' run scripts, read statically (src/peftlab/seeds/shell.py)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from peftlab.errors import PeftlabError
from peftlab.seeds.shell import command_from_argv, markdown_commands, python_commands, read_script

SEEDS = Path(__file__).resolve().parents[1].parent / "shared" / "seed-configs"


def commands(text: str, **variables):
    return [(c.script, *c.args) for c in python_commands(text, variables=variables)]


def one(text: str, **variables):
    found = python_commands(text, variables=variables)
    assert len(found) == 1, found
    return found[0]


# --- continuations, comments, quoting ------------------------------------------------------------

def test_continuations_join_lines_and_the_command_starts_where_it_starts():
    command = one("# a comment\n\nCUDA_VISIBLE_DEVICES=0 python -u run.py \\\n  --x 1 \\\n  --y 2\n")
    assert (command.script, command.args, command.line) == ("run.py", ("--x", "1", "--y", "2"), 3)


def test_a_comment_line_ends_a_continued_command_as_in_bash():
    text = "python a.py \\\n  --x 1 \\\n# python b.py\n  --y 2\npython c.py \\\n  # note \\\n  --z 3\n"
    assert commands(text) == [("a.py", "--x", "1"), ("c.py",)]       # --y 2, --z 3: commands of their own
    assert commands("python a.py --x 1\\\n# not a comment\n") == [("a.py", "--x", "1#", "not", "a", "comment")]
    assert commands("python r.py a#b #c") == [("r.py", "a#b")]


def test_quotes_escapes_and_empty_words():
    text = "X='it''s'; python r.py \"$X\" '$X' \\$X \"a\\\"b\" \"\" '' \"multi\nline\""
    assert commands(text) == [("r.py", "its", "$X", "$X", 'a"b', "", "", "multi\nline")]


# --- variables ------------------------------------------------------------------------------------

def test_variables_defaults_and_word_splitting():
    text = ('X="a b"; E=""\npython r.py $X "$X" ${X}c $E "$E" ${U:-def} ${U-d2} ${U:+no} ${X:+yes} "${U:-a b}"\n'
            "U=\npython r.py ${U:-def} ${U-d2} ${U+set}\n")
    assert commands(text) == [("r.py", "a", "b", "a b", "a", "bc", "", "def", "d2", "yes", "a b"),
                              ("r.py", "def", "set")]


def test_plus_equals_and_tilde():
    assert one('n=a\nn+=.b\nn+=" c"\npython r.py $n ~/x "~/y"', HOME="/h").args == ("a.b", "c", "/h/x", "~/y")


def test_unset_variables_expand_to_nothing_and_are_listed():
    command = one("OUT=${BASE}/out\npython r.py --a '$HOME' --b $1 --out $OUT")
    assert command.args == ("--a", "$HOME", "--b", "--out", "/out") and command.unresolved == ("1", "BASE")


def test_the_environment_is_the_starting_shell_by_default(monkeypatch):
    monkeypatch.setenv("PEFTLAB_SHELL_TEST_DIR", "/data")
    assert python_commands("python r.py $PEFTLAB_SHELL_TEST_DIR")[0].args == ("/data",)
    assert python_commands("python r.py $PEFTLAB_SHELL_TEST_DIR", variables={})[0].unresolved == (
        "PEFTLAB_SHELL_TEST_DIR",)


def test_prefix_assignments_are_the_commands_environment_and_exports_hold():
    text = "A=1\nexport W=w\nexport V\nV=v\nA=2 B=$A python r.py $A $B\nunset W\npython s.py"
    first, second = python_commands(text, variables={})
    assert first.args == ("1",) and first.env == {"V": "v", "W": "w", "A": "2", "B": "1"}
    assert second.env == {"V": "v"}
    assert one("A=1 B=$A\npython r.py $A $B").args == ("1", "1")      # plain assignments: in order


# --- if, &&, ||, for ------------------------------------------------------------------------------

def test_if_elif_else_are_evaluated_like_bash():
    text = ('x=1\nif [ "$x" = 2 ]; then python r.py two\nelif [ $x -eq 1 ]; then\n  if [[ $y == "" ]]; then\n'
            '    python r.py one-empty\n  fi\nelse python r.py other\nfi\nif [ ! -n "" ]; then python r.py neg; fi')
    assert commands(text) == [("r.py", "one-empty"), ("r.py", "neg")]
    assert one("if [ -z ${alpha+x} ];\nthen\n  alpha=0\nfi\npython r.py $alpha").args == ("0",)
    assert one("alpha=3\nif [ -z ${alpha+x} ]; then alpha=0; fi\npython r.py $alpha").args == ("3",)


def test_a_branch_taken_on_an_unset_variable_lists_it():
    assert one('if [ -z "$GPU" ]; then GPU=0; fi\npython r.py --gpu $GPU').unresolved == ("GPU",)


def test_and_or_lists_assume_commands_succeed_and_evaluate_tests():
    assert commands('[ -z "$G" ] && G=7\nmkdir -p x && python r.py $G || python no.py') == [("r.py", "7")]
    assert commands("G=1; [ -z \"$G\" ] && G=7 || python r.py no\npython r.py $G") == [("r.py", "no"), ("r.py", "1")]


def test_for_loops_give_one_command_per_value():
    assert commands('for t in rte "mr pc"; do python r.py --task $t; done') == [
        ("r.py", "--task", "rte"), ("r.py", "--task", "mr", "pc")]
    with pytest.raises(PeftlabError, match=re.escape("s.sh:2: 'for t in $TASKS' loops over nothing: TASKS not set")):
        python_commands("x=1\nfor t in $TASKS; do python r.py --task $t; done", variables={}, source="s.sh")
    text = "for t in a b\ndo\n  for s in 1 2; do\n    python r.py $t$s\n  done\ndone\npython r.py last $t"
    assert commands(text) == [("r.py", "a1"), ("r.py", "a2"), ("r.py", "b1"), ("r.py", "b2"), ("r.py", "last", "b")]


# --- separators, redirections, launchers ----------------------------------------------------------

def test_separators_pipes_and_redirections():
    text = "python a.py --o x 2>&1 | tee log.txt; python b.py > out.txt 2> err &\npython c.py >>x <y &> z"
    scripts, skipped = read_script(text, {})
    assert [(c.script, c.args) for c in scripts] == [("a.py", ("--o", "x")), ("b.py", ()), ("c.py", ())]
    assert skipped == [(1, "tee")]


def test_launchers_give_the_process_count():
    command = one("CUDA_VISIBLE_DEVICES=0,1 python3 -m torch.distributed.launch \\\n --nproc_per_node=4 "
                  "--master_port 29500 --use_env train.py --config c.json")
    assert (command.script, command.processes, command.args) == ("train.py", 4, ("--config", "c.json"))
    assert command.env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert one("torchrun --nnodes 1 --nproc_per_node 2 x.py").processes == 2
    assert one("accelerate launch --num_processes 3 x.py --a 1").processes == 3
    assert one("nohup python3.10 -u -W ignore x.py --a &").args == ("--a",)
    assert one("./x.py --a").script == "./x.py"


def test_other_commands_are_skipped_and_listed_and_exit_stops():
    found, skipped = read_script("cd src && echo go\nsource activate env\npython -m pip install x\n"
                                 "python r.py\nexit 0\npython never.py", {})
    assert [c.script for c in found] == ["r.py"]
    assert skipped == [(1, "cd"), (1, "echo"), (2, "source"), (3, "python")]


# --- command substitutions ------------------------------------------------------------------------

def test_a_command_substitution_is_never_run_and_its_variable_is_listed():
    command = one("DATE=`date +%Y%m%d`\nSAVE=out/${DATE}\necho $(date)\npython run.py --out ${SAVE}/x")
    assert command.args == ("--out", "out/${DATE}/x") and command.unresolved == ("DATE",)


@pytest.mark.parametrize("text, line", [
    ("python run.py --out $(date +%F)", 1),
    ('x=1\npython run.py --out "`date`"', 2),
    ("python run.py ${X:-$(pwd)}", 1),
    ("for f in $(ls); do python r.py $f; done", 1),
    ("D=`date`\nif [ $D = x ]; then python r.py; fi", 2),
])
def test_a_command_substitution_a_command_needs_is_refused_in_one_line(text, line):
    with pytest.raises(PeftlabError, match=r"cannot read '.*' statically; run the python command after "
                                           r"`peftlab train --`") as err:
        python_commands(text, variables={}, source="s.sh")
    assert "\n" not in str(err.value) and str(err.value).startswith(f"s.sh:{line}: ")


# --- what is refused ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("python run.py --x 'open", "s.sh:1: unterminated ' quote"),
    ('x=1\npython run.py --x "open\n\n', 's.sh:2: unterminated " quote'),
    ("python r.py `date", "s.sh:1: unterminated `"),
    ("case $x in\n a) python r.py;;\nesac", "s.sh:1: cannot read 'case' statically"),
    ("f() { python r.py; }", "s.sh:1: cannot read 'f() { python r.py' statically"),
    ("while true; do python r.py; done", "s.sh:1: cannot read 'while' statically"),
    ("(cd x; python r.py)", "s.sh:1: cannot read '(cd x' statically"),
    ("arr=(a b)", "s.sh:1: cannot read 'arr=(a b)' statically"),
    ("python r.py $((1 + 2))", "s.sh:1: cannot read '$((' statically"),
    ("cat <<EOF\nx\nEOF", "s.sh:1: cannot read '<<' statically"),
    ("python r.py ${X/a/b}", "s.sh:1: cannot read '${X/a/b}' statically"),
    ("if [ -f x ]; then\npython r.py\nfi", "s.sh:1: cannot read 'if [ -f x ]' statically"),
    ("if [ 1 ] && [ 2 ]; then python r.py; fi", "s.sh:1: cannot read 'if [ 1 ] && [ 2 ]' statically"),
    ("deepspeed train.py", "s.sh:1: cannot read 'deepspeed' statically"),
    ("python -m mypkg.train", "is not a seed script"),
    ("torchrun --nproc_per_node gpu x.py", "--nproc_per_node must be a positive integer, got 'gpu'"),
    ("if [ 1 ]; then\npython r.py\n", "s.sh:1: 'if' without 'fi'"),
    ("x=1\nfi", "s.sh:2: cannot read 'fi' statically"),
])
def test_what_cannot_be_read_statically_is_refused_in_one_line(text, message):
    with pytest.raises(PeftlabError, match=re.escape(message)) as err:
        python_commands(text, variables={}, source="s.sh")
    assert "\n" not in str(err.value) and str(err.value).startswith("s.sh:")


# --- markdown, the command line -------------------------------------------------------------------

def test_markdown_blocks_read_as_one_script():
    text = ("text\n```bash\nexport D=/x\n```\n```python\nimport os\n```\n```\nSome output: don't\n```\n"
            "~~~sh\npython r.py --p ${D}/a \\\n  --q 1\n~~~\n````\n```\npython not_a_command.py\n```\n````\n")
    found = markdown_commands(text, "doc.md")
    assert [(c.script, c.args, c.line, c.env) for c in found] == [
        ("r.py", ("--p", "/x/a", "--q", "1"), 12, {"D": "/x"})]
    with pytest.raises(PeftlabError, match="doc.md:2: unterminated ' quote"):
        markdown_commands("```bash\npython r.py 'x\n```\n", "doc.md")


def test_the_command_line_after_dashes():
    command = command_from_argv(["CUDA_VISIBLE_DEVICES=1", "torchrun", "--nproc_per_node=2", "runscript.py",
                                 "--a", "1"])
    assert (command.script, command.args, command.env, command.processes) == (
        "runscript.py", ("--a", "1"), {"CUDA_VISIBLE_DEVICES": "1"}, 2)
    with pytest.raises(PeftlabError, match="expected `python SCRIPT ARGS`"):
        command_from_argv(["bash", "run.sh"])


# --- the same as bash -----------------------------------------------------------------------------

SAME_AS_BASH = [
    "python a.py \\\n  --x 1 \\\n# python b.py\n  --y 2\n",
    "X='a  b'; E=; python r.py $X \"$X\" x${E}y \"$E\" ${U:-d} ${X:+\"q $X\"} '$X' \\$X \"a\\\"b\"",
    "A=1\nA=2 B=$A python r.py $A $B\nn=a; n+=.b; python r.py $n ${n+set} ${m-unset}",
    "for t in rte 'mr pc'; do for s in 1 2; do python r.py $t $s; done; done",
    "x=1\nif [ \"$x\" = 2 ]; then python r.py two\nelif [ $x -ge 1 ]; then python r.py one; else python r.py 3; fi",
    "[ -z \"$G\" ] && G=7 || python r.py no\nif [ -z ${G+x} ]; then python r.py unset; fi\npython r.py $G",
    "python r.py a#b #c\npython r.py \"multi\nline\" 'q\nq' \\\n  end; exit 0\npython r.py never",
]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("text", SAME_AS_BASH)
def test_the_commands_are_those_bash_runs(text):
    """bash itself runs the script with `python` a function that prints its arguments."""
    stub = "python() { printf '%s\\037' \"$@\"; printf '\\036'; }\n"
    out = subprocess.run(["bash", "-c", stub + text], capture_output=True, text=True, env={"PATH": os.defpath},
                         timeout=30).stdout
    assert [tuple(c.split("\x1f")[:-1]) for c in out.split("\x1e")[:-1]] == commands(text)


# --- the seeds' own scripts -----------------------------------------------------------------------

SEED_FILES = sorted(SEEDS.rglob("*.sh")) + [SEEDS / "nlprunners" / "packaging" / "adapters.md"] \
    if SEEDS.is_dir() else []
SCRIPTS = {"run_nlg.sh": ["train.py", "evaluate.py"], "run_glue.sh": ["scripts/run_glue.py"],
           "adapters.md": ["nlprunners/nlpr/proj/adapters/runscript.py"] * 2
           + ["nlprunners/nlpr/proj/adapters/runscript_multi_adapter.py"]}


@pytest.mark.parametrize("path", SEED_FILES, ids=lambda path: str(path.relative_to(SEEDS)))
def test_every_seed_script_yields_its_python_commands(path):
    if not SEEDS.is_dir():
        pytest.skip("../shared/seed-configs is absent")
    read = markdown_commands if path.suffix == ".md" else python_commands
    found = read(path.read_text(), variables={}, source=str(path))
    assert [c.script for c in found] == SCRIPTS.get(path.name, ["run_seq2seq.py"])
    if path.parent.name == "scripts" and path.parents[1].name == "seq2seq":
        assert found[0].args == (f"configs/{path.stem}.json",) and found[0].unresolved == ()
    if path.name == "run_nlg.sh":
        assert [(c.processes, c.env["CUDA_VISIBLE_DEVICES"]) for c in found] == [(4, "0,1,2,3"), (1, "0")]
    if path.name == "run_glue.sh":
        args = found[0].args
        assert args[args.index("--max_train_samples") + 1] == "1000"     # the script's debug block is on
        assert args[-3:] == ("1000", "--max_predict_samples", "150")     # 2>&1 | tee: the shell's
        assert found[0].unresolved == ("DATE", "ffn_bn_len", "preseqlen")
        assert found[0].env["WANDB_PROJECT"] == "glue.sst2" and found[0].env["CUDA_VISIBLE_DEVICES"] == "0"
    if path.name == "adapters.md":
        assert {c.unresolved for c in found} == {("NLPR_BASE_DIR",)}
        assert found[0].args[-2:] == ("--output_dir", "/working/adapters//single/mrpc")


def test_the_seed_folder_is_found_or_skipped():
    if not SEEDS.is_dir():
        pytest.skip("../shared/seed-configs is absent")
    assert len(SEED_FILES) == 15
