"""`peftlab train | translate | eval | predict | params | export | plot`. User errors print one line and exit 2."""
from __future__ import annotations

import argparse
import sys

from . import train
from .errors import PeftlabError
from .loading import load
from .models import build_from_config, load_config
from .params_table import print_table
from .peft_interop import export_peft


def _params(args) -> None:
    print_table(args.model, args.method, args.config, args.head)


def _export(args) -> None:
    model = build_from_config(load_config(args.model))
    load(model, args.adapter, trainable=False)
    export_peft(model, None, args.output)
    print(f"wrote {args.output}")


def _runner(command: str):
    def run(args) -> None:
        getattr(train, f"cli_{command}")(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftlab", description="Parameter-efficient transfer learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="trainable-parameter table for methods on a model, without training")
    p.add_argument("--model", default="t5-base", help="preset name, local dir or hub id")
    p.add_argument("--method", action="append", help="method name (repeatable); default: the paper table")
    p.add_argument("--config", action="append", help="method config file (JSON/YAML; repeatable)")
    p.add_argument("--head", choices=["auto", "seq2seq", "causal", "classification"], default="auto")
    p.set_defaults(func=_params)
    p = sub.add_parser("export", help="write a saved LoRA/IA3 adapter in HF PEFT's format")
    p.add_argument("adapter"), p.add_argument("output")
    p.add_argument("--model", required=True, help="the base model's preset, dir or hub id")
    p.set_defaults(func=_export)
    p = sub.add_parser("train", help="train from a config file, a seed original, or `-- python SCRIPT ...`")
    p.add_argument("config", nargs="?", help="peftlab YAML/JSON, or a seed code base's JSON, run script or .md")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--resume", action="store_true", help="continue from the run dir's last checkpoint")
    p.set_defaults(func=_runner("train"))
    p = sub.add_parser("translate", help="print the peftlab config of a seed original, key by key")
    p.add_argument("config", nargs="?", help="a seed code base's JSON, run script (.sh) or .md; or `-- python ...`")
    p.set_defaults(func=_runner("translate"))
    p = sub.add_parser("eval", help="evaluate a run's best checkpoint")
    p.add_argument("run_dir"), p.add_argument("--data"), p.add_argument("--task")
    p.set_defaults(func=_runner("eval"))
    p = sub.add_parser("predict", help="predict with a run's best checkpoint")
    p.add_argument("run_dir"), p.add_argument("--input", required=True), p.add_argument("--output")
    p.add_argument("--task", help="which of the run's tasks (needed when it trained several)")
    p.set_defaults(func=_runner("predict"))
    p = sub.add_parser("plot", help="draw a run's curves and mixing weights as PNG")
    p.add_argument("run_dir")
    p.set_defaults(func=_runner("plot"))
    return parser


def parse(argv) -> argparse.Namespace:
    """`peftlab train|translate [ARGS] -- python SCRIPT ...`: what follows `--` is a seed command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command_line = None
    if argv[:1] in (["train"], ["translate"]) and "--" in argv:
        cut = argv.index("--")
        argv, command_line = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if command_line is not None:
        if not command_line:
            build_parser().error("nothing after `--`: give the original command, e.g. -- python runscript.py ...")
        if args.config is not None:   # with a command line, every positional is an override
            args.overrides = [args.config, *getattr(args, "overrides", [])]
            args.config = None
    elif args.command in ("train", "translate") and args.config is None:
        build_parser().error(f"{args.command}: give a config file, or `-- python SCRIPT ...`")
    args.command_line = command_line
    return args


def main(argv=None) -> int:
    args = parse(argv)
    try:
        args.func(args)
    except PeftlabError as err:
        print(f"peftlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peftlab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
