"""Benchmark the toy model: training time, held-out accuracy, where the answer looks.

Retrains the toy from scratch into its cache (``$ANATOMY_CACHE``: what CI pays
once per run; the cache is then ready for the tests and notebooks), evaluates
it and the same architecture at its random initialisation the same way, and
writes the ``Toy model`` section of ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/toy_training.py
"""

from __future__ import annotations

import os
import time

from results import write_section

from anatomy.toy import QUESTION_TYPES, Recipe, load_toy, untrained_toy
from anatomy.toy.cache import verify
from anatomy.toy.evaluate import Report, evaluate
from anatomy.toy.load import ensure_trained

ACCURACY_SAMPLES = 600  # 200 per question type
ATTENTION_SAMPLES = 100
TARGET_SECONDS = 180


def main() -> None:
    recipe = Recipe()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    manifest = verify(ensure_trained(recipe, retrain=True))
    seconds = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    models = {"trained": load_toy(recipe=recipe, progress=False), "random init": untrained_toy(recipe)}
    accuracy = {name: evaluate(spec, n=ACCURACY_SAMPLES, seed=recipe.seed) for name, spec in models.items()}
    attention = {name: evaluate(spec, n=ATTENTION_SAMPLES, seed=recipe.seed) for name, spec in models.items()}
    body = render(recipe, manifest, seconds, (load_before, load_after), accuracy, attention)
    write_section("Toy model", body)
    print(body)


def render(
    recipe: Recipe, manifest: dict, seconds: float, loads, accuracy: dict[str, Report], attention: dict[str, Report]
) -> str:
    """The section's markdown: training time, then the accuracy and attention tables, trained beside random."""
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average (1 min) before / after "
        f"training {loads[0]:.2f} / {loads[1]:.2f} (above the core count, the time is inflated by other work).",
        "",
        f"- recipe: `{recipe.to_dict()}`",
        f"- training, from scratch to a verified cache: **{seconds:.0f} s** (target <= {TARGET_SECONDS} s): "
        f"{manifest['steps']} steps ({manifest['steps'] / seconds:.2f} steps/s), the validation check passed "
        f"at step {manifest['passed_at']}",
        "- validation checks (step: accuracy colour / where / count): "
        + "; ".join(f"{step}: " + " / ".join(f"{v:.2f}" for v in acc.values()) for step, acc in manifest["checks"]),
        "",
        f"Held-out accuracy ({ACCURACY_SAMPLES} test-split samples, argmax over the full 151,936-token vocabulary; "
        "target >= 95% for every question type):",
        "",
        "| question type | trained | random init |",
        "|---|---|---|",
    ]
    lines += [
        f"| {k} | {v:.1%} | {accuracy['random init'].accuracy[k]:.1%} |"
        for k, v in accuracy["trained"].accuracy.items()
    ]
    lines += [
        f"| where, {case} | {v:.1%} | "
        f"{accuracy['random init'].where_by_case.get(case, float('nan')):.1%} |"
        for case, v in accuracy["trained"].where_by_case.items()
    ]
    stops = {name: f"{report.stops:.1%}" for name, report in accuracy.items()}
    lines += [
        f"| ends its turn after the right answer (`<\\|im_end\\|>`) | {stops['trained']} | {stops['random init']} |"
    ]
    lines += [
        "",
        "A random model's argmax over the full vocabulary almost never lands on one of the 13 answer tokens.",
        "",
        "Attention of the answer position (the last prompt token) to the image, per cell (one merged token, "
        f"28x28 px), mean over heads and over {ATTENTION_SAMPLES} held-out samples (target: a layer where "
        "target / distractors >= 3):",
        "",
        "| layer | model | target | distractors | background | target / distractors |",
        "|---|---|---|---|---|---|",
    ]
    for layer in range(len(attention["trained"].per_area)):
        for name, report in attention.items():
            target, others, background = report.per_area[layer]
            lines.append(
                f"| {layer} | {name} | {target:.4f} | {others:.4f} | {background:.4f} | {report.ratios[layer]:.2f} |"
            )
    lines += ["", "Target / distractors per question type (trained; random init in brackets):", ""]
    lines += ["| layer | " + " | ".join(QUESTION_TYPES) + " |", "|---|" + "---|" * len(QUESTION_TYPES)]
    trained, baseline = attention["trained"].ratios_by_kind(), attention["random init"].ratios_by_kind()
    for layer in range(len(attention["trained"].per_area)):
        cells = [f"{trained[k][layer]:.2f} ({baseline[k][layer]:.2f})" for k in QUESTION_TYPES]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
