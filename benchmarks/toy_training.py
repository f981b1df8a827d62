"""The shipped toy: its training record and its evidence, into ``benchmarks/RESULTS.md`` (section *Toy model*).

    .venv/bin/python benchmarks/toy_training.py           # evaluate the shipped toy (no training)
    .venv/bin/python benchmarks/toy_training.py --ship    # retrain it with Recipe() and ship it, then evaluate

``--ship`` (maintainers only) trains ``Recipe()`` with ``cli.TRAIN_THREADS`` torch
threads and writes ``anatomy/toy/shipped/`` (weights, learning curve, manifest).
Either way the section reports the manifest's record (recipe, versions, steps,
wall time), held-out accuracy per question type and on "where" about repeated
shapes, how often ``<|im_end|>`` follows the answer, and the answer position's
attention per cell per layer, beside the same architecture at its random
initialisation, measured the same way.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from results import write_section

from anatomy.processor import offline_processor
from anatomy.toy import QUESTION_TYPES, Recipe, load_toy, toy_config, train, untrained_toy
from anatomy.toy.cache import verify
from anatomy.toy.cli import TRAIN_THREADS
from anatomy.toy.evaluate import Report, evaluate
from anatomy.toy.training import Log
from anatomy.toy.weights import SHIPPED, read_curve, write_model

ACCURACY_SAMPLES = 600  # 200 per question type
ATTENTION_SAMPLES = 150


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ship", action="store_true", help="retrain Recipe() and overwrite anatomy/toy/shipped")
    if parser.parse_args().ship:
        ship()
    models = {"shipped": load_toy(), "random init": untrained_toy(Recipe())}
    accuracy = {name: evaluate(spec, n=ACCURACY_SAMPLES) for name, spec in models.items()}
    attention = {name: evaluate(spec, n=ATTENTION_SAMPLES) for name, spec in models.items()}
    body = render(verify(SHIPPED), accuracy, attention)
    write_section("Toy model", body)
    print(body)


def ship() -> None:
    """Train ``Recipe()`` and write it to ``SHIPPED``, with the load average around the training."""
    torch.set_num_threads(TRAIN_THREADS)
    loads, log, start = [os.getloadavg()[0]], Log(), time.perf_counter()
    model = train(toy_config(), Recipe(), offline_processor(), log=log)
    seconds = round(time.perf_counter() - start, 1)
    loads.append(os.getloadavg()[0])
    write_model(model, SHIPPED, Recipe(), log, train_seconds=seconds, load_average=loads)


def render(manifest: dict, accuracy: dict[str, Report], attention: dict[str, Report]) -> str:
    """The section's markdown: the training record, then accuracy and attention, shipped beside random."""
    curve = read_curve(SHIPPED)
    size = (SHIPPED / "model.safetensors").stat().st_size
    lines = [
        f"Evaluated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. The shipped toy (`anatomy/toy/shipped/`, "
        f"weights {size / 1e6:.2f} MB; the tied embedding is regenerated from seed "
        f"{manifest['embedding']['seed']}, sha256 `{manifest['embedding']['sha256'][:16]}...`):",
        "",
        f"- recipe: `{manifest['recipe']}`",
        f"- trained with {manifest['versions']} in **{manifest.get('train_seconds')} s** wall "
        f"(load average before / after {manifest.get('load_average')}): {manifest['steps']} steps, the validation "
        f"check passed at step {manifest['passed_at']}",
        "- learning curve (`curve.json`; step: loss, accuracy colour / where / count, `<|im_end|>`, "
        "target/distractor per layer): "
        + "; ".join(
            f"{e['step']}: {e['loss']:.2f}, " + " / ".join(f"{v:.2f}" for v in e["accuracy"].values())
            + f", {e['stops']:.2f}, " + " / ".join(f"{r:.1f}" for r in e["ratios"])
            for e in curve
        ),
        "",
        f"Held-out accuracy ({ACCURACY_SAMPLES} test-split samples, argmax over the full 151,936-token vocabulary; "
        "targets: >= 98% per type and on repeated shapes, `<|im_end|>` >= 95%):",
        "",
        "| question type | shipped | random init |",
        "|---|---|---|",
    ]  # fmt: skip
    lines += [
        f"| {k} | {v:.1%} | {accuracy['random init'].accuracy[k]:.1%} |"
        for k, v in accuracy["shipped"].accuracy.items()
    ]
    lines += [
        f"| where, {case} | {v:.1%} | {accuracy['random init'].where_by_case.get(case, float('nan')):.1%} |"
        for case, v in accuracy["shipped"].where_by_case.items()
    ]
    stops = {name: f"{report.stops:.1%}" for name, report in accuracy.items()}
    lines += [f"| ends its turn after the answer (`<\\|im_end\\|>`) | {stops['shipped']} | {stops['random init']} |"]
    lines += [
        "",
        "Attention of the answer position (the last prompt token) to the image, per cell (one merged token, "
        f"28x28 px), mean over heads and over {ATTENTION_SAMPLES} held-out samples (target: a layer where "
        "target / distractors >= 5):",
        "",
        "| layer | model | target | distractors | background | target / distractors |",
        "|---|---|---|---|---|---|",
    ]
    for layer in range(len(attention["shipped"].per_area)):
        for name, report in attention.items():
            target, others, background = report.per_area[layer]
            lines.append(
                f"| {layer} | {name} | {target:.4f} | {others:.4f} | {background:.4f} | {report.ratios[layer]:.2f} |"
            )
    lines += ["", "Target / distractors per question type (shipped; random init in brackets):", ""]
    lines += ["| layer | " + " | ".join(QUESTION_TYPES) + " |", "|---|" + "---|" * len(QUESTION_TYPES)]
    shipped, baseline = attention["shipped"].ratios_by_kind(), attention["random init"].ratios_by_kind()
    for layer in range(len(attention["shipped"].per_area)):
        cells = [f"{shipped[k][layer]:.2f} ({baseline[k][layer]:.2f})" for k in QUESTION_TYPES]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
