"""Attribution patching against exact patching on the toy: where the fast estimate ranks cells as the exact one does.

For each question type, ``--questions`` held-out toy questions and their counterfactual pictures (one
object recoloured, moved or added) become contrasts; the metric is the logit difference of the two answers.
Every residual site (vision block outputs, decoder layer inputs, the last output) is patched cell by cell,
exactly (``patching_sweep``: one copy per site and cell, batched) and by attribution (``attribution``:
gradient x activation difference, 2 forward passes and 1 backward per batch). Per site and question type:
Spearman's rank correlation of the two effects over the 16 cells, the share of the estimate's top 3 cells
among the exact top 3, and how often both rank the same cell first; then the time of each, in one run.

    python benchmarks/attribution_agreement.py [--questions 20]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
from results import write_section

import anatomy
from anatomy.causal import attribution, compare, logit_diff, pair, patching_sweep
from anatomy.causal.attribution import QUIET, RankAgreement
from anatomy.causal.sweeps import residual_sites
from anatomy.toy import sample
from anatomy.toy.experiments import counterfactual

KINDS = ("colour", "where", "count")
K = 3


def contrasts(toy, kind: str, count: int):
    """``count`` test-split questions of ``kind`` as pairs with their counterfactual pictures, and the metric."""
    samples = [s for s in (sample(0, "test", i) for i in range(6 * count)) if s.kind == kind][:count]
    flipped = [counterfactual(s) for s in samples]
    pairs = [pair(toy, s.scene.pixels(), s.question, corrupted_image=c.scene.pixels(), system=None)
             for s, c in zip(samples, flipped)]  # fmt: skip
    return pairs, logit_diff(toy, [s.answer for s in samples], [c.answer for c in flipped])


@dataclass
class Agreement:
    agreement: RankAgreement
    found: np.ndarray  # (pairs, sites): 1.0 where exact patching's first cell is among the estimate's top K
    runner_up: np.ndarray  # (pairs, sites): exact patching's second largest shift over its largest


def workflow(estimate, exact):
    """Per (pair, site) where exact patching moves the answer: is its first cell in the estimate's top K, and how
    large is its second cell's shift against its first."""
    shape = exact.shift.shape[:2]
    found, runner_up = np.full(shape, np.nan), np.full(shape, np.nan)
    for p, s in np.ndindex(shape):
        shift = np.nan_to_num(exact.shift[p, s], nan=-np.inf)
        if shift.max() < QUIET:
            continue
        order = np.argsort(-shift, kind="stable")
        mine = estimate.shift[p, estimate.sites.index(exact.sites[s])]
        found[p, s] = float(order[0] in np.argsort(-mine, kind="stable")[:K])
        runner_up[p, s] = shift[order[1]] / shift[order[0]]
    return found, runner_up


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the toy's matrices are small: one thread, as the tests run it
    toy = anatomy.load("toy")
    sites = residual_sites(toy)
    rows, seconds = {}, {"exact": 0.0, "attribution": 0.0}
    for kind in KINDS:
        pairs, metric = contrasts(toy, kind, args.questions)
        exact, spent = timed(patching_sweep, toy, pairs, metric, sites)
        seconds["exact"] += spent
        estimate, spent = timed(attribution, toy, pairs, metric, sites)
        seconds["attribution"] += spent
        rows[kind] = Agreement(compare(estimate.cells, exact, k=K), *workflow(estimate.cells, exact))
    lines = [f"The shipped toy, {args.questions} held-out questions per type, each against its counterfactual picture; "
             "metric: logit difference of the two answers; 16 cells per site, patched clean -> corrupted. Per site: "
             f"Spearman's rank correlation / share of the top {K} cells shared / same cell first, means over the "
             "questions (`-`: exact patching moves nothing there).", "",
             "| site | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS)]
    for s, site in enumerate(rows[KINDS[0]].agreement.sites):
        cells = []
        for kind in KINDS:
            found = rows[kind].agreement
            values = [found.spearman[:, s], found.top_k[:, s], found.first[:, s]]
            cells.append("-" if np.isnan(values[0]).all() else
                         " / ".join(f"{np.nanmean(v):.2f}" for v in values))
        lines.append(f"| {site} | " + " | ".join(cells) + " |")
    ratio = seconds["exact"] / seconds["attribution"]
    lines += ["", f"Time for all {len(KINDS) * args.questions} questions and {len(sites)} sites, one thread: exact "
              f"patching {seconds['exact']:.1f} s, attribution {seconds['attribution']:.2f} s: **{ratio:.0f}x faster**.",
              "", "The recommended workflow, attribution over everything and then exact patching of its top "
              f"{K} cells, finds exact patching's first cell in this share of (question, site) where a cell moves "
              "the answer; beside it, how large exact patching's second cell is against its first (median of second / "
              "first shift; 0: one cell carries the whole effect):", "",
              "| | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS),
              f"| exact first cell in the estimate's top {K} | "
              + " | ".join(f"{np.nanmean(rows[k].found):.2f}" for k in KINDS) + " |",
              "| exact second / first shift | " + " | ".join(f"{np.nanmedian(rows[k].runner_up):.2f}" for k in KINDS)
              + " |"]
    body = "\n".join(lines)
    write_section("Attribution against exact patching", body)
    print(body)


if __name__ == "__main__":
    main()
