"""Retraining the toy: does ``python -m anatomy toy train --seed N`` reach its targets, and how fast under load?

    .venv/bin/python benchmarks/toy_seeds.py --contention     # steps/s, 1 and 2 threads, with and without a rival
    .venv/bin/python benchmarks/toy_seeds.py --seeds 0 1 2 3 4

``--seeds`` retrains each seed with the default ``Recipe`` and ``cli.TRAIN_THREADS``
threads, as the command does, into a temporary cache, and evaluates it on 300
held-out samples; a seed passes with >= 95% on every question type and a
target/distractor ratio >= 3 in some layer. Each finished seed is appended to
``toy_seeds.jsonl`` beside this script, so an interrupted run keeps what it
measured; the section *Toy retraining* of ``RESULTS.md`` is written from that file.

``--contention`` times ``STEPS`` training steps (the first stage's batches) with 1
and 2 torch threads, alone and beside one CPU-bound Python process (a busy loop),
in one run, and writes the section *Toy training under contention*.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from results import write_section

from anatomy.processor import offline_processor
from anatomy.toy import CACHE_ENV, Recipe, load_toy, toy_config, train
from anatomy.toy.cache import verify
from anatomy.toy.cli import TRAIN_THREADS
from anatomy.toy.evaluate import evaluate
from anatomy.toy.load import ensure_trained

ROWS = Path(__file__).with_name("toy_seeds.jsonl")
SAMPLES = 300
STEPS = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[])
    parser.add_argument("--contention", action="store_true")
    args = parser.parse_args()
    if args.contention:
        write_section("Toy training under contention", contention())
    for seed in args.seeds:
        with ROWS.open("a") as rows:
            rows.write(json.dumps(retrain(seed)) + "\n")
        write_section("Toy retraining", render_seeds([json.loads(line) for line in ROWS.read_text().splitlines()]))
    print(ROWS.read_text() if ROWS.exists() else "")


def retrain(seed: int) -> dict:
    """Retrain ``seed`` as ``python -m anatomy toy train`` does, in a temporary cache; time and evaluate it."""
    torch.set_num_threads(TRAIN_THREADS)
    recipe = Recipe(seed=seed)
    with tempfile.TemporaryDirectory() as root:
        os.environ[CACHE_ENV] = root
        load = os.getloadavg()[0]
        start = time.perf_counter()
        manifest = verify(ensure_trained(recipe, retrain=True, progress=False))
        seconds = time.perf_counter() - start
        report = evaluate(load_toy(recipe=recipe), n=SAMPLES, seed=seed)
    passed = bool(min(report.accuracy.values()) >= 0.95 and report.ratios.max() >= 3)
    return {"cooldown": recipe.cooldown, "seed": seed, "steps": manifest["steps"], "passed_at": manifest["passed_at"],
            "seconds": round(seconds), "load_average": round(load, 2), "accuracy": report.accuracy,
            "where_by_case": report.where_by_case, "stops": report.stops,
            "ratios": [round(float(r), 2) for r in report.ratios], "passed": passed}  # fmt: skip


def render_seeds(rows: list[dict]) -> str:
    """One table per cool-down measured, the default recipe's first."""
    lines = [
        f"`python -m anatomy toy train --seed N` (default `Recipe`, cool-down {Recipe().cooldown} steps; "
        f"{TRAIN_THREADS} torch thread), each evaluated on {SAMPLES} held-out samples of its own seed. Passes: "
        f">= 95% on every question type and target/distractor >= 3 in some layer. Wall times are on a shared "
        f"2-core machine (load average at the start given). Other cool-downs measured follow, for comparison.",
    ]
    for cooldown in sorted({r["cooldown"] for r in rows}, key=lambda c: (c != Recipe().cooldown, -c)):
        chosen = [r for r in rows if r["cooldown"] == cooldown]
        lines += [
            "",
            f"**Cool-down {cooldown} steps**{' (the default)' if cooldown == Recipe().cooldown else ''}:",
            "",
            "| seed | steps | check passed at | wall s | load avg | colour | where | count | where, repeated "
            "| `<\\|im_end\\|>` | ratio per layer | passes |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in chosen:
            acc = r["accuracy"]
            lines.append(
                f"| {r['seed']} | {r['steps']} | {r['passed_at']} | {r['seconds']} | {r['load_average']} "
                f"| {acc['colour']:.1%} | {acc['where']:.1%} | {acc['count']:.1%} "
                f"| {r['where_by_case'].get('shape repeated', float('nan')):.1%} | {r['stops']:.1%} "
                f"| {' / '.join(f'{x:.1f}' for x in r['ratios'])} | {'yes' if r['passed'] else 'no'} |"
            )
        lines += ["", f"{sum(r['passed'] for r in chosen)} of {len(chosen)} seeds pass."]
    return "\n".join(lines)


def contention() -> str:
    """Steps per second of the first stage, 1 and 2 threads, alone and beside one busy-loop process."""
    processor = offline_processor()
    recipe = Recipe(max_steps=STEPS, check_every=10 * STEPS)  # no checks: steps only
    lines = [
        f"{STEPS} steps of the first stage (26 pictures, 3 questions each), measured in one run; "
        "the rival is `python -c 'while True: pass'`. The load average (1 min) at each start shows "
        "what else the machine was running.",
        "",
        "| torch threads | rival process | steps/s | load avg |",
        "|---|---|---|---|",
    ]
    rates = {}
    for rival in (False, True):
        for threads in (1, 2):
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if rival else None
            try:
                torch.set_num_threads(threads)
                load, start = os.getloadavg()[0], time.perf_counter()
                train(toy_config(), recipe, processor, progress=False)
                rate = STEPS / (time.perf_counter() - start)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            lines.append(f"| {threads} | {'yes' if rival else 'no'} | {rate:.2f} | {load:.2f} |")
            rates[threads, rival] = rate
    best = max((1, 2), key=lambda threads: rates[threads, True])
    lines += ["", f"Fastest beside the rival: {best} thread(s), {rates[best, True] / rates[3 - best, True]:.1f}x the "
              f"other; `python -m anatomy toy train` uses `cli.TRAIN_THREADS` = {TRAIN_THREADS}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
