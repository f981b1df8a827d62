"""The model calls each sweep makes, and what it holds in memory: what ``anatomy.causal.plan`` adds up.

Each estimate walks the sweep's own loop without running it: per layout of pairs (``Contrast.groups``)
the unedited runs, then the edited copies, as many per call as the sweep's own batch size allows.
``ESTIMATES[sweep](arguments)`` returns ``(passes, memory, batch size, edited copies, refusal, least budget)``:
``passes`` counts each kind of call (``Pass``), ``memory`` the parts of the layout whose peak is largest,
``refusal`` the message the sweep would raise for a job over budget (then it is planned at one copy per pass),
and the least ``budget_gib`` the sweep's own check accepts.

Batch sizes and refusals are the sweeps' own (their budget checks, called as they are). ``memory`` is
counted apart, tighter: what the run holds at once, the fixed parts (recorded activations, image tokens)
and the largest call with what each of its copies adds, each call bounded by
``anatomy.causal.cost.pass_bytes`` (without gradients) or ``graph_bytes`` (attribution's probed run).
The sweeps' budget checks count more (attention scores that sdpa never holds, the tower and the decoder
together), so a job within ``budget_gib`` by their count holds less than that.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass

from torch import nn

from anatomy.capture.sites import MERGED_WINDOW, NONE, Site
from anatomy.causal.attribution import pairs_per_pass
from anatomy.causal.cost import FLOAT32, PIXEL_VALUES, decoder_flops, graph_bytes, kernel, pass_bytes, vision_flops
from anatomy.causal.groups import cell_groups
from anatomy.causal.heads import head_size
from anatomy.causal.knockouts import knockout_groups, knockout_size, layer_job
from anatomy.causal.sweeps import Job, batch_size, source_positions
from anatomy.causal.sweeps import plan as check_job
from anatomy.model import text_config, unwrap

STREAM = re.compile(r"(Layer|Block|Attention|MLP|Norm|Merger|Embed)")  # modules whose output is the stream's width


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


def _refused(check, *args) -> tuple[int, str | None, float]:
    """``check(*args)`` (copies per pass; its last argument the budget in GiB), or 1 and the refusal's message when
    the job is over budget; and the least budget it accepts, to 1 MiB (found by halving)."""
    *rest, budget = args

    def accepts(gib: float) -> bool:
        try:
            check(*rest, gib)
            return True
        except MemoryError:
            return False

    low, high = 0.0, budget
    while not accepts(high):
        low, high = high, 2 * high
    while high - low > 2**-10:
        middle = (low + high) / 2
        low, high = (low, middle) if accepts(middle) else (middle, high)
    try:
        return check(*args), None, high
    except MemoryError as error:
        return 1, str(error), high


def site_bytes(spec, site: Site, tokens: int, patches: int) -> int:
    """Bytes of one prompt's activation at ``site``: its rows (tokens, patches or merged tokens) times its width (a
    linear layer's features, the stream's width for blocks, attention, MLPs and norms, the MLP's inner width for
    anything else inside a block, such as ``act_fn``)."""
    config, bare = spec.config, unwrap(spec)
    v, t = config.vision_config, text_config(config)
    itemsize, module = bare.dtype.itemsize, bare.get_submodule(site.module)
    if site.order == MERGED_WINDOW:
        return patches // v.spatial_merge_size**2 * v.out_hidden_size * itemsize
    decoder = site.order == NONE
    rows, width, inner = (tokens, t.hidden_size, t.intermediate_size) if decoder else (patches, v.hidden_size,
                                                                                       v.intermediate_size)
    if isinstance(module, nn.Linear):
        width = module.in_features if site.hook == "input" else module.out_features
    elif not isinstance(module, (nn.Embedding, nn.Conv3d)) and not STREAM.search(type(module).__name__):
        width = max(width, inner)
    return rows * width * itemsize


def _call(job: Job, p: Pass, masked: bool = False) -> int:
    """Peak bytes of the no-grad call ``p`` (``anatomy.causal.cost.pass_bytes``)."""
    return pass_bytes(job.spec.config, p.rows, p.tokens, p.patches, p.grid, p.keep, p.vision, p.decoder,
                      unwrap(job.spec).dtype.itemsize, masked)  # fmt: skip


def _image_tokens(job: Job, rows: list[int], shape: dict) -> int:
    """Bytes of the pictures' image tokens of pairs ``rows``, computed once for the decoder-only copies."""
    cells = shape["patches"] // job.spec.config.vision_config.spatial_merge_size**2
    return len(rows) * cells * text_config(job.spec.config).hidden_size * unwrap(job.spec).dtype.itemsize


def _pixels(rows: int, shape: dict) -> int:
    """Bytes of both sides' pixels of ``rows`` pairs: the batches a sweep builds once and keeps (float32)."""
    return 2 * rows * shape["patches"] * PIXEL_VALUES * FLOAT32


def _peak(*candidates: Counter) -> dict[str, int]:
    """The layout whose parts add up to most."""
    return dict(max(candidates, key=lambda parts: parts.total()))


def _patching(arguments: dict) -> tuple:
    """``patching_sweep``'s and ``position_sweep``'s calls, per layout: the source run, the target's image tokens,
    the unpatched target, then each site's copies, ``batch_size`` at a time. Held: the recorded activations (moved
    to the target's positions: a second copy while moving), the image tokens, and the largest call, a copy's
    recorded value and its edited activation with it."""
    positions = "cells" not in arguments
    job = check_job(arguments["spec"], arguments["contrast"], arguments["metric"], arguments["sites"],
                    arguments["direction"], vision=not positions)  # fmt: skip
    size, refusal, least = _refused(batch_size, job, arguments["budget_gib"])
    call = functools.lru_cache(maxsize=None)(functools.partial(_call, job))  # thousands of copies, a few kinds
    groups = 1 if positions else len(cell_groups(job.spec, job.pairs[0].grid, arguments["cells"]))
    passes, peaks, total = Counter(), [], 0
    for rows in job.contrast.groups:
        shape = _layout(job, rows)
        common = {"patches": shape["patches"], "grid": shape["grid"], "keep": shape["keep"]}
        unedited = [Pass(len(rows), shape["tokens"][job.source], vision=True, **common),
                    Pass(len(rows), 0, vision=True, decoder=False, **common),
                    Pass(len(rows), shape["tokens"][job.target], vision=False, **common)]  # fmt: skip
        passes.update(unedited)
        copies = (sum(int((source_positions(job.pairs[r], job.target) >= 0).sum()) for r in rows) if positions
                  else len(rows) * groups)  # fmt: skip
        recorded = len(rows) * sum(site_bytes(job.spec, s, shape["tokens"][job.source], shape["patches"])
                                   for s in job.sites)  # fmt: skip
        largest = max([recorded] + [call(p) for p in unedited])
        for site in job.sites:
            one = site_bytes(job.spec, site, shape["tokens"][job.target], shape["patches"])
            for chunk in _chunks(copies, size):
                copy = Pass(chunk, shape["tokens"][job.target], vision=site.order != NONE, **common)
                passes[copy] += 1
                largest = max(largest, call(copy) + 2 * chunk * one)
        peaks.append(Counter({"pixels": _pixels(len(rows), shape), "recorded activations": recorded,
                              "image tokens": _image_tokens(job, rows, shape), "largest pass": largest}))  # fmt: skip
        total += copies * len(job.sites)
    return passes, _peak(*peaks), size, total, refusal, least


def _attribution(arguments: dict) -> tuple:
    """``attribution``'s calls, per batch of pairs: the source run, (decoder sites only) the target's image tokens,
    the probed target run and its backward. Held: the recorded activations, and the largest call: the probed run
    is its graph (``anatomy.causal.cost.graph_bytes``), the probes, their gradients and one site's float32
    first-order change."""
    job = check_job(arguments["spec"], arguments["contrast"], arguments["metric"], arguments["sites"],
                    arguments["direction"])  # fmt: skip
    size, refusal, least = _refused(pairs_per_pass, job, arguments["budget_gib"])
    vision = any(site.order != NONE for site in job.sites)
    config, itemsize = job.spec.config, unwrap(job.spec).dtype.itemsize
    passes, peaks = Counter(), []
    for layout in job.contrast.groups:
        shape = _layout(job, layout)
        common = {"patches": shape["patches"], "grid": shape["grid"], "keep": shape["keep"]}
        for rows in _chunks(len(layout), size):
            passes[Pass(rows, shape["tokens"][job.source], vision=True, **common)] += 1
            if not vision:
                passes[Pass(rows, 0, vision=True, decoder=False, **common)] += 1
            passes[Pass(rows, shape["tokens"][job.target], vision=vision, backward=True, **common)] += 1
        pairs, target = min(size, len(layout)), shape["tokens"][job.target]
        recorded = pairs * sum(site_bytes(job.spec, s, shape["tokens"][job.source], shape["patches"])
                               for s in job.sites)  # fmt: skip
        probes = [site_bytes(job.spec, s, target, shape["patches"]) for s in job.sites]
        graph = pairs * (graph_bytes(config, target, shape["patches"], shape["grid"], shape["keep"], vision, itemsize)
                         + 2 * sum(probes) + 3 * max(probes) * FLOAT32 // itemsize)  # fmt: skip
        unprobed = [Pass(pairs, shape["tokens"][job.source], vision=True, **common)]
        unprobed += [] if vision else [Pass(pairs, 0, vision=True, decoder=False, **common)]
        peaks.append(Counter({"pixels": _pixels(pairs, shape), "recorded activations": recorded,
                              "largest pass": max([graph] + [_call(job, p) for p in unprobed])}))  # fmt: skip
    cells = len(cell_groups(job.spec, job.pairs[0].grid, arguments["cells"]))
    return passes, _peak(*peaks), size, len(job.pairs) * len(job.sites) * cells, refusal, least


def _layers(arguments: dict, size_of, extra, groups: int, dense_layers: int) -> tuple:
    """``knockout_sweep``'s and ``head_sweep``'s calls, per layout: the corrupted run, the clean image tokens, the
    unedited clean run, then each layer's ``groups`` copies per pair, ``size`` at a time. Held: the image tokens,
    ``extra(job, rows, tokens, layers)``'s fixed parts, and the largest call with its bytes per copy."""
    job, layers = layer_job(arguments["spec"], arguments["contrast"], arguments["metric"], arguments["layers"])
    size, refusal, least = _refused(size_of, job, layers, arguments["budget_gib"])
    call = functools.lru_cache(maxsize=None)(functools.partial(_call, job))  # thousands of copies, a few kinds
    passes, peaks = Counter(), []
    for rows in job.contrast.groups:
        shape = _layout(job, rows)
        common = {"patches": shape["patches"], "grid": shape["grid"], "keep": shape["keep"]}
        unedited = [Pass(len(rows), shape["tokens"]["corrupted"], vision=True, **common),
                    Pass(len(rows), 0, vision=True, decoder=False, **common),
                    Pass(len(rows), shape["tokens"]["clean"], vision=False, **common)]  # fmt: skip
        passes.update(unedited)
        fixed, per_copy = extra(job, rows, shape["tokens"]["clean"], len(layers))
        largest = max(call(p) for p in unedited)
        for chunk in _chunks(len(rows) * groups, size) * len(layers):
            copy = Pass(chunk, shape["tokens"]["clean"], vision=False, dense_layers=dense_layers, **common)
            passes[copy] += 1
            largest = max(largest, call(copy, masked=dense_layers > 0) + chunk * per_copy)
        peaks.append(Counter({"pixels": _pixels(len(rows), shape), "image tokens": _image_tokens(job, rows, shape),
                              **fixed, "largest pass": largest}))  # fmt: skip
    return passes, _peak(*peaks), size, len(job.pairs) * len(layers) * groups, refusal, least


def _knockout(arguments: dict) -> tuple:
    """Per copy, its knockout masks: the forbidden pairs and the edited boolean mask (one byte per query and key),
    and the kernel's own: sdpa turns a boolean mask into a float one (through a negated copy), eager fills its
    float mask into a new one."""
    groups = len(knockout_groups(arguments["spec"], arguments["contrast"].pairs[0].grid, arguments["cells"]))
    itemsize = unwrap(arguments["spec"]).dtype.itemsize
    per_pair = 1 + itemsize if kernel(arguments["spec"].config) == "eager" else 3 + itemsize
    return _layers(arguments, knockout_size,
                   lambda job, rows, tokens, layers: ({}, per_pair * tokens**2), groups, dense_layers=1)  # fmt: skip


def _heads(arguments: dict) -> tuple:
    """Mean and patch ablation hold both runs' head outputs and the replacements at every layer, and per copy its
    mixed head outputs and their projection."""
    heads, ablation = text_config(arguments["spec"].config).num_attention_heads, arguments["ablation"]
    spec = arguments["spec"]
    width, itemsize = text_config(spec.config).hidden_size, unwrap(spec).dtype.itemsize

    def extra(job, rows, tokens, layers):
        if ablation == "zero":
            return {}, 0
        recorded = 3 * len(rows) * layers * tokens * width * itemsize
        return {"recorded head outputs": recorded}, 2 * tokens * width * itemsize

    return _layers(arguments, lambda job, layers, budget: head_size(job, layers, ablation, budget),
                   extra, heads, dense_layers=0)  # fmt: skip


ESTIMATES = {"patching": _patching, "positions": _patching, "attribution": _attribution, "knockout": _knockout,
             "heads": _heads}  # fmt: skip
