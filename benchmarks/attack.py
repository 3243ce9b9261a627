"""The hostile-user attack of issue #19, re-runnable: 313 generated runner configs, 1,022 generated API
calls, 99 file tamperings, 20 kills and interrupts, disk full, concurrent runs. Every case is classified
as ok, refused (one line, nothing changed), raw traceback, silent garbage, lost data, hang, or valid
refused (a valid input refused: reported apart). Seeded, so a run replays case for case.

    .venv/bin/python benchmarks/attack.py            # the full attack (about 9 minutes on 2 cores)
    .venv/bin/python benchmarks/attack.py --quick    # a small subset, a smoke test (seconds)

Writes benchmarks/results/attack.json (every case) and attack.md (the table); --quick writes
attack_quick.*. Cases that end in a bad class keep their folder under the work folder (printed).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attack_common  # noqa: E402,F401  (first: puts tests/ on the path, one torch thread)
import attack_api  # noqa: E402
import attack_configs  # noqa: E402
import attack_fixtures  # noqa: E402
import attack_process  # noqa: E402
import attack_tamper  # noqa: E402
from attack_common import BAD, CLASSES  # noqa: E402

FULL = {"runner configs": 313, "API calls": 1022, "tamperings": 99, "kills and interrupts": 20,
        "disk full": 10, "concurrent runs": 5}
QUICK = {"runner configs": 6, "API calls": 16, "tamperings": 6, "kills and interrupts": 1, "disk full": 2,
         "concurrent runs": 1}
TIMEOUT = 60.0     # seconds for one case; a normal one takes under two
HOW = {
    "runner configs": "a tiny valid run (BERT/T5/GPT-2, 2 steps) with 1-2 fields set to values drawn from per-field "
                      "lists of valid and invalid ones, or the file, the data or a previous run attacked; "
                      "`peftlab.cli.main` in a forked process with a fresh current folder and a 60 s limit",
    "API calls": "attach with a config field set valid/invalid for every registered method, no-configs and bad "
                 "names, save/load, merge/unmerge, detach, composition, on tiny t5/bert/gpt2/llama; after a "
                 "refusal the state_dict, modules, adapters and active setup must be bitwise as before",
    "tamperings": "saved adapters loaded with pl.load, and runs resumed with --resume after checkpoints/last "
                  "(weights, optimizer, state), log.jsonl or config.json were flipped, cut, swapped, linked, "
                  "replaced by a FIFO, forged; the few harmless edits must resume to the same weights",
    "kills and interrupts": "`python -m peftlab.cli train` (12 steps) hit by SIGKILL/SIGINT at random moments and "
                            "by PEFTLAB_KILL_AT in a step, an evaluation and a checkpoint write, 4 per run, then "
                            "resumed; the end must equal an uninterrupted run bit for bit",
    "disk full": "RLIMIT_FSIZE (SIGXFSZ ignored: writes fail with EFBIG) at several sizes while training, "
                 "resuming (checkpoint writes) and pl.save over an adapter; then, with room again, the run "
                 "must go on to the untroubled run's weights",
    "concurrent runs": "two `peftlab train` processes into one output_dir started together (fresh, overwrite, "
                       "--resume); one must finish, the other be refused naming the holder's pid, and the "
                       "folder must equal an untroubled run",
}


def run_attacks(counts: dict, seed: int, work: Path, quick: bool, progress) -> list[dict]:
    shared = attack_fixtures.setup(work)
    attack_tamper.setup(shared)
    attack_process.setup(shared, quick)
    results: list[dict] = []
    configs = attack_configs.generate(FULL["runner configs"], seed)
    for number, case in enumerate(_spread(configs, counts["runner configs"], quick)):
        results.append(progress(attack_configs.run_case(number, case, shared, TIMEOUT)))
    calls = attack_api.generate(FULL["API calls"], seed, attack_api.applicable())
    for number, case in enumerate(_spread(calls, counts["API calls"], quick)):
        results.append(progress(attack_api.run_case(number, case, shared, TIMEOUT)))
    tamperings = attack_tamper.generate(FULL["tamperings"], seed)
    for number, case in enumerate(_spread(tamperings, counts["tamperings"], quick)):
        results.append(progress(attack_tamper.run_case(number, case, shared, TIMEOUT)))
    fork = quick        # the full attack kills real interpreters; the smoke test forks (no import cost)
    plan = attack_process.kill_plan(counts["kills and interrupts"], 1 if quick else 4, seed,
                                    shared["process"]["steps"])
    for number, kills in enumerate(plan):
        for outcome in attack_process.kill_run(number, kills, shared, fork, 4 * TIMEOUT):
            results.append(progress(outcome))
    for number, case in enumerate(attack_process.disk_cases(quick)[: counts["disk full"]]):
        results.append(progress(attack_process.disk_case(number, case, shared, 4 * TIMEOUT)))
    for number, variant in enumerate(attack_process.CONCURRENT[: counts["concurrent runs"]]):
        results.append(progress(attack_process.concurrent_case(number, variant, shared, fork, 4 * TIMEOUT)))
    return results


def _spread(cases: list, count: int, quick: bool) -> list:
    """All cases, or for --quick `count` of them spread over the list (each kind of case a chance)."""
    if not quick or count >= len(cases) or count <= 0:
        return cases[:max(count, 0)]
    step = len(cases) / count
    return [cases[int(i * step)] for i in range(count)]


def table(results: list[dict]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in results:
        row = out.setdefault(r["attack"], {c: 0 for c in CLASSES})
        row[r["class"]] += 1
    return out


def markdown(results: list[dict], seconds: float, command: str) -> str:
    rows = table(results)
    head = ["attack class", "tries", "ok", "refused (one line)", "raw traceback", "silent garbage", "lost data",
            "hang", "valid refused"]
    lines = [f"# Hostile-user attack ({date.today().isoformat()})", "",
             f"`{command}` — {len(results)} cases in {seconds / 60:.1f} minutes.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    total = {c: 0 for c in CLASSES}
    for attack, row in rows.items():
        lines.append(f"| {attack} | {sum(row.values())} | " + " | ".join(str(row[c]) for c in CLASSES) + " |")
        for c in CLASSES:
            total[c] += row[c]
    lines.append(f"| **all** | **{sum(total.values())}** | " + " | ".join(f"**{total[c]}**" for c in CLASSES) + " |")
    lines += ["", "## How each class attacks", ""] + [f"- **{name}**: {text}." for name, text in HOW.items()]
    notes = [r for r in results if r["class"] in BAD or r["class"] == "valid_refused"]
    if notes:
        lines += ["", "## Cases in a bad class, and valid inputs refused", ""]
        lines += [f"- {r['attack']} #{r['id']} ({r['class']}): `{json.dumps(r['input'], default=repr)[:300]}` — "
                  f"{r['message'][:300]}" for r in notes]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict[str, dict[str, int]]:
    parser = argparse.ArgumentParser(description="Re-run the hostile-user attack of issue #19 and classify every case.")
    parser.add_argument("--quick", action="store_true", help="a small subset: a smoke test")
    parser.add_argument("--seed", type=int, default=2026, help="draws the cases (the same seed, the same cases)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="where the results go")
    parser.add_argument("--work", help="where the cases run (default: a new temporary folder)")
    parser.add_argument("--only", help="comma-separated attack classes to run, e.g. 'tamperings,disk full'")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    counts = dict(QUICK if args.quick else FULL)
    if args.only:      # the others run no case (to look at one class while fixing it)
        wanted = {name.strip() for name in args.only.split(",")}
        counts = {name: (n if name in wanted else 0) for name, n in counts.items()}
    work = Path(args.work or tempfile.mkdtemp(prefix="peftlab-attack-"))
    started = time.perf_counter()

    def progress(outcome: dict) -> dict:
        if not args.quiet and outcome["class"] not in ("ok", "refused"):
            print(f"{outcome['attack']} #{outcome['id']}: {outcome['class']}: {outcome['message'][:200]}", flush=True)
        return outcome
    results = run_attacks(counts, args.seed, work, args.quick, progress)
    seconds = time.perf_counter() - started
    name = "attack_quick" if args.quick else "attack"
    command = ".venv/bin/python benchmarks/attack.py" + (" --quick" if args.quick else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"seed": args.seed, "seconds": round(seconds, 1), "counts": table(results), "cases": results}
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1, default=repr))
    (out / f"{name}.md").write_text(markdown(results, seconds, command))
    if not args.quiet:
        print(markdown(results, seconds, command).split("\n## ")[0])
        print(f"work folder: {work}; results: {out / name}.json, .md")
    return table(results)


if __name__ == "__main__":
    rows = main()
    sys.exit(1 if any(row[c] for row in rows.values() for c in BAD) else 0)
