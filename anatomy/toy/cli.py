"""``python -m anatomy toy ...``: evaluate the shipped toy, or retrain one.

``main_toy`` takes the arguments after ``toy``:

    python -m anatomy toy evaluate --n 300  # the shipped toy: held-out accuracy, turn ending, attention
    python -m anatomy toy train --seed 3    # retrain into the cache (over any model there), print its directory
    python -m anatomy toy ensure --seed 3   # the same, unless a verified retrained model exists
    python -m anatomy toy path [--seed 3]   # the shipped directory, or the cache directory of a seed
    python -m anatomy toy evaluate --seed 3 # a retrained toy instead of the shipped one

Errors and warnings are one line each on stderr; Ctrl-C or SIGTERM during training
keeps the previous model and says so in one line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from contextlib import contextmanager

import torch

from anatomy.toy.cache import CacheError, cache_dir
from anatomy.toy.evaluate import Report, evaluate
from anatomy.toy.load import ensure_trained, load_toy, untrained_toy
from anatomy.toy.training import Recipe
from anatomy.toy.weights import SHIPPED

TRAIN_THREADS = 1  # torch threads while training: the faster choice on a busy 2-core machine (benchmarks/RESULTS.md)


def main_toy(argv: list[str] | None = None) -> int:
    """Run one toy command; returns the exit status (0, 2 on an error, 130 when interrupted)."""
    args = _parser().parse_args(argv)
    recipe = None if args.seed is None else Recipe(seed=args.seed)
    with _one_line_messages():
        try:
            return _run(args, recipe)
        except CacheError as error:
            print(f"anatomy toy: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as interrupt:
            print(f"anatomy toy: {args.command} interrupted ({interrupt or 'SIGINT'}){_kept(args, recipe)}",
                  file=sys.stderr)  # fmt: skip
            return 130


def _kept(args: argparse.Namespace, recipe: Recipe | None) -> str:
    """What an interrupted command left: for ``train``/``ensure``, the previous model (if any), untouched."""
    if args.command not in ("ensure", "train"):
        return ""
    kept = cache_dir(recipe or Recipe())
    return f"; the previous model is kept in {kept}" if kept.exists() else "; nothing was written"


def _run(args: argparse.Namespace, recipe: Recipe | None) -> int:
    if args.command in ("ensure", "train"):
        torch.set_num_threads(args.threads)
        print(ensure_trained(recipe or Recipe(), retrain=args.command == "train"))
    elif args.command == "path":
        print(SHIPPED if recipe is None else cache_dir(recipe))
    else:
        trained = load_toy(recipe=recipe)
        name = "shipped toy" if recipe is None else f"toy retrained with seed {recipe.seed}"
        for title, spec in ((name, trained), ("random init", untrained_toy(recipe or Recipe()))):
            # each toy on its own seed's test split, as benchmarks/toy_seeds.py scores it
            print(describe(title, evaluate(spec, n=args.n, seed=0 if recipe is None else recipe.seed)))
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


@contextmanager
def _one_line_messages():
    """Warnings printed as ``anatomy toy: warning: ...`` (no source line); SIGTERM raised as ``KeyboardInterrupt``."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"anatomy toy: warning: {message}", file=sys.stderr)

    def terminate(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, terminate)
    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m anatomy toy", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("ensure", "train", "path", "evaluate"))
    parser.add_argument("--seed", type=_seed, default=None,
                        help="a retrained toy's seed (train/ensure default 0; evaluate/path default: the shipped toy)")
    parser.add_argument("--n", type=int, default=300, help="held-out samples to evaluate (default 300)")
    parser.add_argument("--threads", type=int, default=TRAIN_THREADS,
                        help=f"torch threads while training (default {TRAIN_THREADS})")  # fmt: skip
    return parser


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}; expected a non-negative integer")
    return value
