"""The model calls each sweep makes, and what it holds in memory: what ``anatomy.causal.plan`` adds up.

Each estimate walks the sweep's own loop without running it: per layout of pairs (``Contrast.groups``)
the unedited runs, then the edited copies, as many per call as the sweep's own batch size allows.
``ESTIMATES[sweep](arguments)`` returns ``(passes, memory, batch size, edited copies, refusal)``:
``passes`` counts each kind of call (``Pass``), ``memory`` the parts of the layout whose peak is largest,
``refusal`` the message the sweep would raise for a job over budget (then it is planned at one copy per pass).

The byte estimates are the sweeps' own: ``knockout_bytes`` and ``head_bytes`` are what those sweeps size
their batches with; ``patching_bytes`` and ``attribution_bytes`` restate what ``sweeps.batch_size`` and
``attribution.pairs_per_pass`` compute inline (a test holds them to it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from anatomy.capture.sites import NONE
from anatomy.causal.attribution import graph_bytes, pairs_per_pass
from anatomy.causal.cost import decoder_flops, vision_flops
from anatomy.causal.groups import cell_groups
from anatomy.causal.heads import head_bytes, head_size
from anatomy.causal.knockouts import knockout_bytes, knockout_groups, knockout_size, layer_job, tokens_and_patches
from anatomy.causal.sweeps import Job, batch_size, copy_bytes, site_bytes, source_positions
from anatomy.causal.sweeps import plan as check_job
from anatomy.model import text_config, unwrap


@dataclass(frozen=True)
class Pass:
    """One kind of model call: ``rows`` prompts of ``tokens`` tokens (answers appended) and ``patches`` patches on a
    ``grid`` of (rows, cols) patches; which parts run; ``dense_layers`` decoder layers given a dense mask."""

    rows: int
    tokens: int
    patches: int
    grid: tuple[int, int]
    vision: bool
    decoder: bool = True
    keep: int = 1
    dense_layers: int = 0
    backward: bool = False

    def parts(self, config) -> tuple[float, float]:
        """FLOPs in the vision tower and in the decoder (a backward counted as one more forward)."""
        vision = vision_flops(config, self.patches, self.grid) if self.vision else 0.0
        text = decoder_flops(config, self.tokens, self.keep, self.dense_layers) if self.decoder else 0.0
        times = self.rows * (2 if self.backward else 1)
        return vision * times, text * times

    def flops(self, config) -> float:
        return sum(self.parts(config))


def _chunks(count: int, size: int) -> list[int]:
    """The rows of each pass when ``count`` copies run ``size`` at a time: ``_chunks(5, 2) == [2, 2, 1]``."""
    return [min(size, count - first) for first in range(0, count, size)]


def _layout(job: Job, rows: list[int]) -> dict:
    """Token counts of both sides (answers appended), patches, grid and kept positions of pairs ``rows``."""
    keep = job.metric.span(rows, len(rows))
    first = job.pairs[rows[0]]
    _, height, width = first.clean.grid_thw[0].tolist()
    tokens = {side: getattr(first, side)["input_ids"].shape[1] + keep - 1 for side in ("clean", "corrupted")}
    return {"tokens": tokens, "patches": height * width, "grid": (height, width), "keep": keep}


def _refused(check, *args) -> tuple[int, str | None]:
    """``check(*args)`` (copies per pass), or 1 and the refusal's message when the job is over budget."""
    try:
        return check(*args), None
    except MemoryError as error:
        return 1, str(error)


def _largest(fixed: dict[str, int], copy: int, least: int, copies: int) -> Counter:
    """The parts of a layout's peak: ``fixed``, then its largest pass (``copies`` copies, or ``least`` bytes)."""
    return Counter({**fixed, "largest pass": max(copies * copy, least)})


def _peak(*candidates: Counter) -> dict[str, int]:
    """The layout whose parts add up to most."""
    return dict(max(candidates, key=lambda parts: parts.total()))


def _patching(arguments: dict) -> tuple:
    """``patching_sweep``'s and ``position_sweep``'s calls, per layout: the source run, the target's image tokens,
    the unpatched target, then each site's copies, ``batch_size`` at a time."""
    positions = "cells" not in arguments
    job = check_job(arguments["spec"], arguments["contrast"], arguments["metric"], arguments["sites"],
                    arguments["direction"], vision=not positions)  # fmt: skip
    size, refusal = _refused(batch_size, job, arguments["budget_gib"])
    groups = 1 if positions else len(cell_groups(job.spec, job.pairs[0].grid, arguments["cells"]))
    passes, peaks, total = Counter(), [], 0
    for rows in job.contrast.groups:
        shape = _layout(job, rows)
        common = {"patches": shape["patches"], "grid": shape["grid"], "keep": shape["keep"]}
        passes[Pass(len(rows), shape["tokens"][job.source], vision=True, **common)] += 1
        passes[Pass(len(rows), 0, vision=True, decoder=False, **common)] += 1
        passes[Pass(len(rows), shape["tokens"][job.target], vision=False, **common)] += 1
        copies = (sum(int((source_positions(job.pairs[r], job.target) >= 0).sum()) for r in rows) if positions
                  else len(rows) * groups)  # fmt: skip
        for site in job.sites:
            for chunk in _chunks(copies, size):
                passes[Pass(chunk, shape["tokens"][job.target], vision=site.order != NONE, **common)] += 1
        peaks.append(_largest(*patching_bytes(job, rows), min(copies, size)))
        total += copies * len(job.sites)
    return passes, _peak(*peaks), size, total, refusal


def patching_bytes(job: Job, rows: list[int]) -> tuple[dict[str, int], int, int]:
    """Pairs ``rows`` of one layout, as ``sweeps.batch_size`` estimates them: the fixed parts (recorded activations,
    the pictures' image tokens), the bytes of one copy, and of the unpatched runs of the pairs."""
    config, itemsize = job.spec.config, unwrap(job.spec).dtype.itemsize
    vision = any(site.order != NONE for site in job.sites)
    tokens, patches, keep = tokens_and_patches(job, rows)
    recorded = len(rows) * sum(site_bytes(config, s, tokens, patches, itemsize) for s in job.sites)
    images = len(rows) * patches // config.vision_config.spatial_merge_size**2 * text_config(config).hidden_size
    one = copy_bytes(config, tokens, patches, keep, vision, itemsize)
    copy = one + max(site_bytes(config, s, tokens, patches, itemsize) for s in job.sites)
    return {"recorded activations": recorded, "image tokens": images * itemsize}, copy, len(rows) * one


def _attribution(arguments: dict) -> tuple:
    """``attribution``'s calls, per batch of pairs: the source run, (decoder sites only) the target's image tokens,
    the probed target run and its backward."""
    job = check_job(arguments["spec"], arguments["contrast"], arguments["metric"], arguments["sites"],
                    arguments["direction"])  # fmt: skip
    size, refusal = _refused(pairs_per_pass, job, arguments["budget_gib"])
    vision = any(site.order != NONE for site in job.sites)
    passes, peaks = Counter(), []
    for layout in job.contrast.groups:
        shape = _layout(job, layout)
        common = {"patches": shape["patches"], "grid": shape["grid"], "keep": shape["keep"]}
        for rows in _chunks(len(layout), size):
            passes[Pass(rows, shape["tokens"][job.source], vision=True, **common)] += 1
            if not vision:
                passes[Pass(rows, 0, vision=True, decoder=False, **common)] += 1
            passes[Pass(rows, shape["tokens"][job.target], vision=vision, backward=True, **common)] += 1
        pairs = min(size, len(layout))
        peaks.append(Counter({name: pairs * one for name, one in attribution_bytes(job, layout).items()}))
    cells = len(cell_groups(job.spec, job.pairs[0].grid, arguments["cells"]))
    return passes, _peak(*peaks), size, len(job.pairs) * len(job.sites) * cells, refusal


def attribution_bytes(job: Job, rows: list[int]) -> dict[str, int]:
    """The parts ``attribution.pairs_per_pass`` counts for one pair of the layout ``rows``."""
    config, itemsize = job.spec.config, unwrap(job.spec).dtype.itemsize
    vision = any(site.order != NONE for site in job.sites)
    tokens, patches, keep = tokens_and_patches(job, rows)
    sites = 3 * sum(site_bytes(config, s, tokens, patches, itemsize) for s in job.sites)
    return {"forward graph": graph_bytes(config, tokens, patches, keep, vision, itemsize),
            "recorded, probed activations and gradients": sites}  # fmt: skip


def _layers(arguments: dict, size_of, bytes_of, groups: int, dense_layers: int) -> tuple:
    """``knockout_sweep``'s and ``head_sweep``'s calls, per layout: the corrupted run, the clean image tokens, the
    unedited clean run, then each layer's ``groups`` copies per pair, ``size`` at a time."""
    job, layers = layer_job(arguments["spec"], arguments["contrast"], arguments["metric"], arguments["layers"])
    size, refusal = _refused(size_of, job, layers)
    passes, peaks = Counter(), []
    for rows in job.contrast.groups:
        shape = _layout(job, rows)
        common = {"patches": shape["patches"], "grid": shape["grid"], "keep": shape["keep"]}
        passes[Pass(len(rows), shape["tokens"]["corrupted"], vision=True, **common)] += 1
        passes[Pass(len(rows), 0, vision=True, decoder=False, **common)] += 1
        passes[Pass(len(rows), shape["tokens"]["clean"], vision=False, **common)] += 1
        for chunk in _chunks(len(rows) * groups, size) * len(layers):
            passes[Pass(chunk, shape["tokens"]["clean"], vision=False, dense_layers=dense_layers, **common)] += 1
        peaks.append(_largest(*bytes_of(job, rows, len(layers)), min(size, len(rows) * groups)))
    return passes, _peak(*peaks), size, len(job.pairs) * len(layers) * groups, refusal


def _knockout(arguments: dict) -> tuple:
    groups = len(knockout_groups(arguments["spec"], arguments["contrast"].pairs[0].grid, arguments["cells"]))
    return _layers(arguments, lambda job, layers: knockout_size(job, layers, arguments["budget_gib"]),
                   lambda job, rows, layers: knockout_bytes(job, rows), groups, dense_layers=1)  # fmt: skip


def _heads(arguments: dict) -> tuple:
    heads, ablation = text_config(arguments["spec"].config).num_attention_heads, arguments["ablation"]
    return _layers(arguments, lambda job, layers: head_size(job, layers, ablation, arguments["budget_gib"]),
                   lambda job, rows, layers: head_bytes(job, rows, layers, ablation), heads,
                   dense_layers=0)  # fmt: skip


ESTIMATES = {"patching": _patching, "positions": _patching, "attribution": _attribution, "knockout": _knockout,
             "heads": _heads}  # fmt: skip
