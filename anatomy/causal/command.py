"""The causal commands, headless: patch, knockout and heads on two pictures; figures and numbers to a folder.

    python -m anatomy patch CLEAN CORRUPT --question Q --answers GOOD BAD --out DIR
        [--sites all|decoder|vision|NAME...] [--cells cell|2x2|window] [--direction D] [--approx]
    python -m anatomy knockout CLEAN CORRUPT --question Q --answers GOOD BAD --out DIR
        [--cells image|cell|2x2|window] [--layers N...]
    python -m anatomy heads CLEAN CORRUPT --question Q --answers GOOD BAD --out DIR
        [--ablation zero|mean|patch] [--layers N...]
    common: [--model SOURCE] [--random-weights] [--device D] [--plan] [--time-on GPU] [--budget-gib G]
            [--max-pixels N] [--resize]

Each command pairs the pictures (``anatomy.causal.pair``: the question asked of both, cells aligned),
measures ``logit_diff(GOOD, BAD)``, and prints the plan of its sweep (``anatomy.causal.plan``);
``--plan`` stops there, having run nothing but the plan's one timing pass. Otherwise it prints both
runs' answers and metric, runs the sweep (``patching_sweep``, or ``attribution`` with ``--approx``;
``knockout_sweep``; ``head_sweep``), prints the entries that move the metric most, and writes the
figures (PNG) and ``VERB.json`` (every number) to ``--out``.

Models: ``--model`` as ``anatomy.load`` takes it (toy, the default; tiny; a hub id, with
HF_HUB_OFFLINE=0 to download; a directory). A released size ("7B") alone is a skeleton: ``--plan``
only. ``--random-weights`` builds that configuration with random weights in bf16, to time the sweep
on a GPU; on a CPU a released size is refused unless ``--plan`` (its sweeps take hours there).

Bad input is one line on stderr and exit status 2, before any model runs: a missing picture, a
video, pictures of different aspect ratios (or grids, without ``--resize``), an empty or multi-token
answer, an unknown site or layer, a job over ``--budget-gib``, a released size with random weights
on a CPU, a skeleton without ``--plan``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from transformers import Qwen2_5_VLForConditionalGeneration

from anatomy.causal.contrast import VIDEO_SUFFIXES, Contrast, pair
from anatomy.causal.cost import PEAK_FLOPS
from anatomy.causal.groups import RESOLUTIONS
from anatomy.causal.heads import ABLATIONS, heads_figure
from anatomy.causal.knockouts import IMAGE, knockout_figure
from anatomy.causal.metrics import logit_diff
from anatomy.causal.plan import countable, plan
from anatomy.causal.sweeps import DEFAULT_BUDGET_GIB, DIRECTIONS, cells_figure, positions_figure, residual_sites
from anatomy.causal.sweeps import short_site
from anatomy.dissect import checked_out, save_figures
from anatomy.inputs import DEFAULT_MAX_PIXELS
from anatomy.lab.figures import drawable
from anatomy.model import PUBLISHED_SIZES, Specimen, shipped_config
from anatomy.sources import load

VERBS = ("patch", "knockout", "heads")
TOP = 5  # entries printed
FIGURE_SITES = 6  # sites drawn over the picture: the ones that move the metric most


def parser(verb: str) -> argparse.ArgumentParser:
    """The options of ``python -m anatomy VERB``."""
    what = {"patch": "activation patching over (site, cell group)",
            "knockout": "answer -> image attention knocked out per decoder layer",
            "heads": "one decoder attention head ablated at a time"}[verb]  # fmt: skip
    parser = argparse.ArgumentParser(prog=f"anatomy {verb}", description=what)
    parser.add_argument("clean", help="the clean picture (a path or URL)")
    parser.add_argument("corrupt", help="the corrupted picture, the same aspect ratio")
    parser.add_argument("--question", required=True, help="the question asked of both pictures")
    parser.add_argument("--answers", nargs=2, required=True, metavar=("GOOD", "BAD"),
                        help="one token each: the metric is logit(GOOD) - logit(BAD) for the next token")
    parser.add_argument("--out", default=None, help="directory for the figures (PNG) and VERB.json")
    parser.add_argument("--model", default="toy", help="'toy' (default), 'tiny', '3B'...'72B', a hub id, a directory")
    parser.add_argument("--random-weights", action="store_true",
                        help="with a released size: its configuration with random weights (bf16; GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs (default: cuda when there is one, else cpu)")
    parser.add_argument("--plan", action="store_true", help="print the plan (rows, passes, memory, time); run nothing")
    parser.add_argument("--time-on", choices=sorted(PEAK_FLOPS), default=None,
                        help="time the plan on this GPU's peak instead of one pass measured here")
    parser.add_argument("--budget-gib", type=float, default=DEFAULT_BUDGET_GIB,
                        help=f"GiB the sweep may hold beside the weights: as many copies per pass as fit, by the "
                             f"plan's count; a job that does not fit one is refused (default {DEFAULT_BUDGET_GIB:g})")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"scale larger pictures down to this many pixels (default {DEFAULT_MAX_PIXELS:,}; "
                             f"0: no cap)")
    parser.add_argument("--resize", action="store_true",
                        help="resample a corrupted picture of another size (same aspect ratio) to the clean one's")
    if verb == "patch":
        parser.add_argument("--sites", default="all",
                            help="'all' residual sites (default), 'decoder', 'vision', or site names, comma-separated")
        parser.add_argument("--cells", default="cell", choices=RESOLUTIONS, help="cell groups patched as one")
        parser.add_argument("--direction", default=DIRECTIONS[0], choices=DIRECTIONS)
        parser.add_argument("--approx", action="store_true", help="attribution patching: one gradient, estimates")
    else:
        parser.add_argument("--layers", type=_layers, default=None,
                            help="decoder layers, comma-separated (default: all)")
    if verb == "knockout":
        parser.add_argument("--cells", default=IMAGE, choices=(IMAGE, *RESOLUTIONS),
                            help="keys blocked: every image token at once (default), or one group at a time")
    if verb == "heads":
        parser.add_argument("--ablation", default="zero", choices=ABLATIONS,
                            help="a head's output becomes zero, its mean over the corrupted prompt, or its value there")
    return parser


def main(verb: str, argv: list[str]) -> int:
    """Run ``python -m anatomy VERB ARGV``; bad input: one line on stderr, status 2."""
    args = parser(verb).parse_args(argv)
    try:
        return run(verb, args)
    except (ValueError, TypeError, FileNotFoundError, MemoryError) as error:
        print(f"anatomy {verb}: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


def run(verb: str, args: argparse.Namespace) -> int:
    """Check, plan, and unless ``--plan`` run the sweep and write what it found."""
    out = _checked_arguments(args)
    spec = countable(specimen(args.model, args.random_weights, args.device, args.plan))
    contrast = Contrast([pair(spec, args.clean, args.question, corrupted_image=args.corrupt,
                              match="resize" if args.resize else None, max_pixels=args.max_pixels or None)])
    metric = logit_diff(spec, *args.answers)
    planned = plan(spec, contrast, metric, device=args.time_on, **sweep_options(verb, args, spec))
    print(planned)
    if planned.refusal:  # the sweep's own message, in the command's words
        raise MemoryError(planned.refusal.replace("budget_gib=", "--budget-gib ").replace("budget_gib", "--budget-gib"))
    if args.plan:
        return 0
    check = contrast.check(metric)
    result = planned.run()
    found = result.cells if getattr(args, "approx", False) else result
    lines, numbers, drawn = FINDINGS[verb](found, result)
    print(f"ran {found.forward_passes:,} forward passes in {found.seconds:.3g} s (planned {planned.forward_passes:,}, "
          f"about {planned.seconds:.3g} s)")  # fmt: skip
    print("\n".join(lines))
    numbers = {"command": verb, "model": spec.source, "question": args.question, "answers": list(args.answers),
               "metric": found.metric, "grid": list(contrast.pairs[0].grid),
               "changed_cells": np.argwhere(contrast.pairs[0].changed).tolist(),
               "clean": {"metric": float(found.clean[0]), "answer": check.clean_answers[0]},
               "corrupted": {"metric": float(found.corrupted[0]), "answer": check.corrupted_answers[0]},
               "forward_passes": found.forward_passes, "batch_size": found.batch_size, "seconds": found.seconds,
               "plan": {"rows": planned.rows, "forward_passes": planned.forward_passes, "flops": planned.flops,
                        "seconds": planned.seconds, "peak_bytes": planned.peak_bytes},
               **numbers, "figures": [f"{name}.png" for name in drawn]}  # fmt: skip
    print("\n".join(save_figures(drawn, out)))
    (out / f"{verb}.json").write_text(json.dumps(numbers, indent=1))
    print(f"wrote {out / f'{verb}.json'}")
    return 0


def _checked_arguments(args: argparse.Namespace) -> Path | None:
    """Refuse, before any model loads: no ``--out`` without ``--plan``, a bad one, a missing picture or a video."""
    if args.out is None and not args.plan:
        raise ValueError("--out DIR is needed: where the figures and the numbers go (or --plan: run nothing)")
    out = checked_out(args.out)
    for name, picture in (("clean", args.clean), ("corrupted", args.corrupt)):
        if picture.lower().split("?")[0].endswith(VIDEO_SUFFIXES):
            raise ValueError(f"the {name} picture {picture!r} is a video file; expected one still picture")
        if "://" not in picture and not picture.startswith("data:") and not Path(picture).is_file():
            raise FileNotFoundError(f"the {name} picture {picture!r} is not a file")
    return out


def specimen(source: str, random_weights: bool, device: str, plan_only: bool) -> Specimen:
    """The model: ``anatomy.load(source, device=...)``, or with ``random_weights`` the shipped configuration
    ``source`` with random weights (a released size on a CPU: refused unless only planned, then the skeleton)."""
    if not random_weights:
        spec = load(source, device=None if source in PUBLISHED_SIZES else device)
        if not spec.has_weights and not plan_only:
            raise ValueError(f"model {source!r} is a skeleton without weights: add --plan to plan the sweep, "
                             f"--random-weights (on a GPU) to run it with random weights, or give a hub id")
        return spec
    if source in PUBLISHED_SIZES and plan_only:
        return load(source)  # a plan needs the shapes only
    if source in PUBLISHED_SIZES and torch.device(device).type == "cpu":
        raise ValueError(f"--random-weights builds the {source} on the CPU, where a sweep takes hours: run it on a "
                         f"GPU (--device cuda), or add --plan to see what it would cost")  # fmt: skip
    return random_weights_model(source, device)


def random_weights_model(name: str, device: str) -> Specimen:
    """The shipped configuration ``name`` (``anatomy.model.shipped_config``) with random weights (seed 0, the
    global generator left as it was), in bf16 on ``device``."""
    config = shipped_config(name)
    chosen = torch.device(device)
    with torch.random.fork_rng(devices=[chosen] if chosen.type == "cuda" else []), chosen:
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    return Specimen(model.eval(), f"{name} (random weights)", "untrained")


def sweep_options(verb: str, args: argparse.Namespace, spec) -> dict:
    """``plan``'s sweep and options for the command's flags."""
    if verb == "knockout":
        return {"sweep": "knockout", "layers": args.layers, "cells": args.cells, "budget_gib": args.budget_gib}
    if verb == "heads":
        return {"sweep": "heads", "layers": args.layers, "ablation": args.ablation, "budget_gib": args.budget_gib}
    return {"sweep": "attribution" if args.approx else "patching", "sites": chosen_sites(spec, args.sites),
            "cells": args.cells, "direction": args.direction, "budget_gib": args.budget_gib}  # fmt: skip


def chosen_sites(spec, names: str) -> list[str] | None:
    """``"all"`` -> None (every residual site), ``"decoder"``/``"vision"`` -> that tower's residual sites; site names
    and wildcards, comma-separated, as a list (``anatomy.capture.sites.resolve`` checks them)."""
    if names == "all":
        return None
    if names in ("decoder", "vision"):
        return [site for site in residual_sites(spec) if site.startswith(names)]
    return [name.strip() for name in names.split(",")]


def _layers(text: str) -> list[int]:
    """``"0,2"`` -> ``[0, 2]`` (``--layers``)."""
    try:
        return [int(layer) for layer in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of layer numbers") from None


def _listed(array: np.ndarray) -> list:
    """An array as nested lists, NaN as None (JSON has no NaN)."""
    return [_listed(row) for row in array] if array.ndim > 1 else [None if np.isnan(v) else float(v) for v in array]


def _groups(groups) -> dict:
    """Cell groups for JSON: resolution, labels, and each group's (row, col) cells."""
    return {"resolution": groups.resolution, "labels": list(groups.labels),
            "cells": [[list(cell) for cell in cells] for cells in groups.members]}  # fmt: skip


def patch_findings(found, result) -> tuple[list[str], dict, dict]:
    """The (site, group) entries that move the metric most; the numbers; the figures."""
    shift = np.nan_to_num(found.shift[0], nan=-1.0)  # (sites, groups)
    lines = [f"top (site, cell group) by |effect - unpatched| ({found.method}, {found.direction}):"]
    for s, g in zip(*np.unravel_index(np.argsort(-shift, axis=None, kind="stable")[:TOP], shift.shape)):
        effect = found.effects[0, s, g]
        lines.append(f"  {short_site(found.sites[s]):<16} {found.groups.labels[g]:<16} effect {effect:+.3f}")
    numbers = {"method": found.method, "direction": found.direction, "sites": found.sites,
               "groups": _groups(found.groups), "effects": _listed(found.effects[0])}  # fmt: skip
    strongest = sorted(np.argsort(-shift.max(1), kind="stable")[:FIGURE_SITES])
    drawn = {"cells": cells_figure(found, sites=[found.sites[s] for s in strongest]), "sites": sites_figure(found)}
    if found is not result:  # attribution: every (decoder site, position) came with it
        positions = result.positions
        lines += position_lines(positions)
        numbers["positions"] = {"sites": positions.sites, "tokens": positions.tokens[0],
                                "effects": _listed(positions.effects[0])}  # fmt: skip
        drawn["positions"] = positions_figure(positions)
    return lines, numbers, drawn


def position_lines(positions) -> list[str]:
    """The (decoder site, position) entries that move the metric most, each with its token, decoded."""
    unpatched = float(positions.direction == "corrupted->clean")
    shift = np.nan_to_num(np.abs(positions.effects[0] - unpatched), nan=-1.0)
    lines = ["top (site, position):"]
    for s, q in zip(*np.unravel_index(np.argsort(-shift, axis=None, kind="stable")[:TOP], shift.shape)):
        token = repr(positions.tokens[0][q])  # quoted, escaped: ' house', '\\n'
        effect = positions.effects[0, s, q]
        lines.append(f"  {short_site(positions.sites[s]):<16} {q:>4} {token:<16} effect {effect:+.3f}")
    return lines


def knockout_findings(found, result) -> tuple[list[str], dict, dict]:
    """The (layer, group) knockouts that lose most; the numbers; the figure."""
    lost = np.nan_to_num(np.abs(1 - found.effects[0]), nan=-1.0)  # (layers, groups)
    lines = ["top (layer, cells) by what blocking answer -> image attention lost (effect 1 = nothing):"]
    for i, g in zip(*np.unravel_index(np.argsort(-lost, axis=None, kind="stable")[:TOP], lost.shape)):
        lines.append(f"  layer {found.layers[i]:<3} {found.groups.labels[g]:<18} effect {found.effects[0, i, g]:+.3f}"
                     f"  ({found.metric} {found.values[0, i, g]:+.3f})")  # fmt: skip
    numbers = {"layers": found.layers, "groups": _groups(found.groups), "values": _listed(found.values[0]),
               "effects": _listed(found.effects[0])}  # fmt: skip
    return lines, numbers, {"knockout": knockout_figure(found)}


def heads_findings(found, result) -> tuple[list[str], dict, dict]:
    """The (layer, head) ablations that lose most; the numbers; the figure."""
    lost = np.nan_to_num(np.abs(1 - found.effects[0]), nan=-1.0)  # (layers, heads)
    lines = [f"top (layer, head) by what {found.ablation} ablation lost (effect 1 = nothing):"]
    for i, h in zip(*np.unravel_index(np.argsort(-lost, axis=None, kind="stable")[:TOP], lost.shape)):
        lines.append(f"  layer {found.layers[i]:<3} head {h:<3} effect {found.effects[0, i, h]:+.3f}"
                     f"  ({found.metric} {found.values[0, i, h]:+.3f})")  # fmt: skip
    numbers = {"ablation": found.ablation, "layers": found.layers, "values": _listed(found.values[0]),
               "effects": _listed(found.effects[0])}  # fmt: skip
    return lines, numbers, {"heads": heads_figure(found)}


FINDINGS = {"patch": patch_findings, "knockout": knockout_findings, "heads": heads_findings}


def sites_figure(result) -> Figure:
    """Pair 0: the effect of every (site, cell group) as one heat map, sites down, groups across."""
    effects = result.effects[0]  # (sites, groups)
    figure = Figure(figsize=(min(24.0, max(5.0, 0.25 * effects.shape[1] + 2.5)), 1.2 + 0.22 * len(result.sites)),
                    layout="constrained")  # fmt: skip
    axis = figure.subplots()
    shown = axis.imshow(np.ma.masked_invalid(effects), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto",
                        interpolation="nearest")  # fmt: skip
    if effects.shape[1] <= 48:
        axis.set_xticks(range(effects.shape[1]), result.groups.labels, rotation=90, fontsize=6)
    axis.set_xlabel(f"cell group ({result.groups.resolution}, raster order)")
    axis.set_yticks(range(len(result.sites)), [short_site(s) for s in result.sites], fontsize=6)
    figure.colorbar(shown, ax=axis, label="effect (1 = clean)")
    axis.set_title(f"{result.method}, {result.direction}: {drawable(result.metric, 70)}", fontsize=9)
    return figure
