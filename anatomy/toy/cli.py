"""``python -m anatomy toy ...``: retrain, locate or evaluate the toy model.

``main_toy`` takes the arguments after ``toy``:

    python -m anatomy toy ensure            # train unless a verified cache exists, print its directory
    python -m anatomy toy train             # retrain (over any cache), print the cache directory
    python -m anatomy toy path              # print the cache directory of the default recipe
    python -m anatomy toy evaluate --n 300  # held-out accuracy and attention, trained vs random
"""

from __future__ import annotations

import argparse

from anatomy.toy.cache import cache_dir
from anatomy.toy.evaluate import Report, evaluate
from anatomy.toy.load import ensure_trained, load_toy, untrained_toy
from anatomy.toy.training import Recipe


def main_toy(argv: list[str] | None = None) -> int:
    """Run one toy command; returns the exit status."""
    args = _parser().parse_args(argv)
    recipe = Recipe(seed=args.seed)
    if args.command in ("ensure", "train"):
        print(ensure_trained(recipe, retrain=args.command == "train"))
    elif args.command == "path":
        print(cache_dir(recipe))
    else:
        trained = load_toy(recipe=recipe)
        for name, spec in (("trained", trained), ("random init", untrained_toy(recipe))):
            print(describe(name, evaluate(spec, n=args.n, seed=args.seed)))
    return 0


def describe(name: str, report: Report) -> str:
    """A few lines: accuracy per question type, attention per cell and target/distractor ratio per layer."""
    lines = [f"{name}: accuracy " + ", ".join(f"{k} {v:.1%}" for k, v in report.accuracy.items())]
    lines.append("  where, by case: " + ", ".join(f"{case} {v:.1%}" for case, v in report.where_by_case.items()))
    lines.append(f"  ends its turn after the answer (<|im_end|>): {report.stops:.1%}")
    for layer, ((target, others, background), ratio) in enumerate(zip(report.per_area, report.ratios)):
        lines.append(
            f"  layer {layer}: attention per cell target {target:.4f}, distractors {others:.4f}, "
            f"background {background:.4f}; target/distractor {ratio:.2f}"
        )
    by_kind = report.ratios_by_kind()
    lines.append("  target/distractor by question type: " + "; ".join(
        f"{kind} " + ", ".join(f"{r:.2f}" for r in ratios) for kind, ratios in by_kind.items()
    ) + " (layer 0, 1, ...)")  # fmt: skip
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m anatomy toy", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("ensure", "train", "path", "evaluate"))
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--n", type=int, default=300, help="held-out samples to evaluate (default 300)")
    return parser
