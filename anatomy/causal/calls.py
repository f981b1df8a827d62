"""The model calls each sweep makes and what it holds: one cost model for the sweeps' batch sizes and for ``plan``.

Each ``*_calls`` function walks a sweep's own loop without running it: per layout of pairs
(``Contrast.groups``) the unedited runs, then the edited copies, ``size`` per call. It returns ``Calls``,
which gives for any batch size ``size`` each kind of call and how many (``passes``, ``Pass``) and the parts
held at the peak of the layout whose parts add up to most (``memory``, bytes, the weights apart): the fixed
parts (pixels, recorded activations, image tokens) and the largest call with what each of its copies adds,
each call bounded by ``anatomy.causal.cost.pass_bytes`` (without gradients) or ``graph_bytes`` (attribution's
probed run).

The sweep and its plan size their batches by that one count:

>>> calls = patching_calls(job, groups=16)
>>> calls.batch_size(budget_gib=4.0)    # the most copies per pass whose peak fits 4 GiB, the weights apart
>>> calls.least_gib                     # the least budget_gib that runs the job (one copy per pass)

A job whose peak with one copy per pass is over budget is refused (``MemoryError``) before the model runs,
naming the budget, the parts and the least budget that runs it. ``job`` is a checked ``anatomy.causal.sweeps.Job``
(its pairs, metric, sites and sides), taken as it is: the sweeps import this module.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from anatomy.capture.budget import check_gib
from anatomy.capture.sites import MERGED_WINDOW, NONE, Site
from anatomy.causal.cost import (
    FLOAT32,
    PIXEL_VALUES,
    decoder_flops,
    graph_bytes,
    kernel,
    pass_bytes,
    size_text,
    vision_flops,
)
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


def least_budget(held: int) -> float:
    """The least ``budget_gib`` that holds ``held`` bytes, rounded up to 4 significant digits, as messages print it:
    ``least_budget(2**30 + 1) == 1.001``, ``least_budget(5 * 2**20) == 0.004883``."""
    gib = held / 2**30
    step = 10.0 ** (math.floor(math.log10(gib)) - 3)
    rounded = float(f"{math.ceil(gib / step) * step:.4g}")
    while rounded * 2**30 < held:  # float rounding: one more step
        rounded = float(f"{rounded + step:.4g}")
    return rounded


@dataclass
class Calls:
    """A sweep's calls and memory at any batch size. ``passes(size)``: each kind of call and how many; ``memory(size)``:
    the parts held at the peak (bytes, the weights apart); ``copies``: the edited copies (attribution: its (site,
    group) estimates); ``most``: the batch size past which nothing changes (a layout's copies of one site or layer;
    attribution: a layout's pairs); ``advice``: what to change when refused; ``probed``: the sites whose gradients
    its backward passes take (attribution's)."""

    passes: Callable[[int], Counter]
    memory: Callable[[int], dict[str, int]]
    copies: int
    most: int
    advice: str
    probed: tuple[Site, ...] = ()

    def peak(self, size: int) -> int:
        """Bytes held at the peak with ``size`` copies per pass, the weights apart."""
        return sum(self.memory(size).values())

    @property
    def least_gib(self) -> float:
        """The least ``budget_gib`` that runs the job (one copy per pass), as ``least_budget`` rounds it."""
        return least_budget(self.peak(1))

    def refusal(self, budget_gib: float) -> str | None:
        """None when one copy per pass fits ``budget_gib``; else the message the sweep raises."""
        check_gib(budget_gib)
        if self.peak(1) <= budget_gib * 2**30:
            return None
        parts = ", ".join(f"{name} {size_text(size)}" for name, size in self.memory(1).items())
        return (f"this job is above budget_gib={budget_gib:g}: one copy per pass would hold {parts}; the least that "
                f"runs it is budget_gib={self.least_gib:g}; {self.advice}")  # fmt: skip

    def batch_size(self, budget_gib: float) -> int:
        """The most copies per pass (at most ``most``) whose peak fits ``budget_gib`` GiB, the weights apart; a job
        that one copy per pass does not fit is refused (``MemoryError``)."""
        refusal = self.refusal(budget_gib)
        if refusal:
            raise MemoryError(refusal)
        low, high = 1, max(self.most, 1)  # the peak grows with the size: the last size that fits, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if self.peak(middle) <= budget_gib * 2**30 else (low, middle - 1)
        return low


def _count(passes: Counter, copies: int, size: int, times: int = 1, **kind) -> None:
    """Add the calls of ``copies`` copies run ``size`` at a time (``times`` over), each a ``Pass(rows, **kind)``:
    the full calls, then the rest."""
    if copies // size:
        passes[Pass(size, **kind)] += times * (copies // size)
    if copies % size:
        passes[Pass(copies % size, **kind)] += times


def _layout(job, rows: list[int]) -> dict:
    """Token counts of both sides (answers appended), patches, grid and kept positions of pairs ``rows``."""
    keep = job.metric.span(rows, len(rows))
    first = job.pairs[rows[0]]
    _, height, width = first.clean.grid_thw[0].tolist()
    tokens = {side: getattr(first, side)["input_ids"].shape[1] + keep - 1 for side in ("clean", "corrupted")}
    return {"tokens": tokens, "patches": height * width, "grid": (height, width), "keep": keep}


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
                                                                                       v.intermediate_size)  # fmt: skip
    if isinstance(module, nn.Linear):
        width = module.in_features if site.hook == "input" else module.out_features
    elif not isinstance(module, (nn.Embedding, nn.Conv3d)) and not STREAM.search(type(module).__name__):
        width = max(width, inner)
    return rows * width * itemsize


def _call(job, p: Pass, masked: bool = False) -> int:
    """Peak bytes of the no-grad call ``p`` (``anatomy.causal.cost.pass_bytes``)."""
    return pass_bytes(job.spec.config, p.rows, p.tokens, p.patches, p.grid, p.keep, p.vision, p.decoder,
                      unwrap(job.spec).dtype.itemsize, masked, job.metric.copies_logits)  # fmt: skip


def _image_tokens(job, rows: int, shape: dict) -> int:
    """Bytes of the pictures' image tokens of ``rows`` pairs, computed once for the decoder-only copies."""
    cells = shape["patches"] // job.spec.config.vision_config.spatial_merge_size**2
    return rows * cells * text_config(job.spec.config).hidden_size * unwrap(job.spec).dtype.itemsize


def _pixels(rows: int, shape: dict) -> int:
    """Bytes of both sides' pixels of ``rows`` pairs: the batches a sweep builds once and keeps (float32)."""
    return 2 * rows * shape["patches"] * PIXEL_VALUES * FLOAT32


def _peak(candidates: list[Counter]) -> dict[str, int]:
    """The layout whose parts add up to most."""
    return dict(max(candidates, key=lambda parts: parts.total()))


def _unedited(rows: int, first: int, then: int, common: dict) -> list[Pass]:
    """A layout's unedited calls: a full run of ``first`` tokens, the image tokens of the other side's pictures,
    and that side's decoder-only run of ``then`` tokens."""
    return [Pass(rows, first, vision=True, **common), Pass(rows, 0, vision=True, decoder=False, **common),
            Pass(rows, then, vision=False, **common)]  # fmt: skip


def patching_calls(job, groups: int | None) -> Calls:
    """``patching_sweep``'s calls (``groups`` cell groups), or ``position_sweep``'s (``groups`` None: one copy per
    position with a counterpart), per layout: the source run, the target's image tokens, the unpatched target, then
    each site's copies, ``size`` at a time. Held: the recorded activations (moved to the target's positions: a
    second copy while moving), the image tokens, and the largest call, a copy's recorded value and its edited
    activation with it, and each distinct selection's boolean mask over the batch's tokens or patches (at most one
    per copy: a position sweep's copies each patch their own position)."""
    call = functools.lru_cache(maxsize=None)(functools.partial(_call, job))  # thousands of copies, a few kinds
    layouts = []
    for rows in job.contrast.groups:
        shape = _layout(job, rows)
        common = {"patches": shape["patches"], "grid": shape["grid"], "keep": shape["keep"]}
        source, target = shape["tokens"][job.source], shape["tokens"][job.target]
        length = getattr(job.pairs[rows[0]], job.target)["input_ids"].shape[1]
        copies = int((job.moved(rows, length) >= 0).sum()) if groups is None else len(rows) * groups
        ones = Counter()  # per tower, the largest activation of one prompt at a patched site
        for site in job.sites:
            vision = site.order != NONE
            ones[vision] = max(ones[vision], site_bytes(job.spec, site, target, shape["patches"]))
        recorded = len(rows) * sum(site_bytes(job.spec, s, source, shape["patches"]) for s in job.sites)
        kinds = Counter(site.order != NONE for site in job.sites)  # sites per tower
        layouts.append((rows, shape, common, target, copies, ones, kinds, recorded,
                        _unedited(len(rows), source, target, common)))  # fmt: skip

    def passes(size: int) -> Counter:
        counted = Counter()
        for _, _, common, target, copies, _, kinds, _, unedited in layouts:
            counted.update(unedited)
            for vision, sites in kinds.items():
                _count(counted, copies, size, sites, tokens=target, vision=vision, **common)
        return counted

    def memory(size: int) -> dict[str, int]:
        peaks = []
        for rows, shape, common, target, copies, ones, _, recorded, unedited in layouts:
            largest, chunk = max([recorded] + [call(p) for p in unedited]), min(size, copies)
            for vision, one in ones.items() if chunk else ():
                masks = chunk * chunk * (shape["patches"] if vision else target)  # one bool per row and token, per copy
                largest = max(largest, call(Pass(chunk, target, vision=vision, **common)) + 2 * chunk * one + masks)
            images = _image_tokens(job, len(rows), shape)
            peaks.append(Counter({"pixels": _pixels(len(rows), shape), "recorded activations": recorded,
                                  "image tokens": images, "largest pass": largest}))  # fmt: skip
        return _peak(peaks)

    total = sum(layout[4] for layout in layouts) * len(job.sites)
    advice = ("patch fewer sites, or cut the contrast into smaller batches (Contrast(pairs, batch_size=...)), or pass "
              "a larger budget_gib")  # fmt: skip
    return Calls(passes, memory, total, max(layout[4] for layout in layouts), advice)


def attribution_calls(job, groups: int) -> Calls:
    """``attribution``'s calls over ``groups`` cell groups, per batch of ``size`` pairs: the source run, (decoder
    sites only) the target's image tokens, the probed target run and its backward. Held: the recorded activations,
    and the largest call: the probed run is its graph (``anatomy.causal.cost.graph_bytes``), the probes, their
    gradients and one site's float32 first-order change."""
    vision = any(site.order != NONE for site in job.sites)
    config, itemsize = job.spec.config, unwrap(job.spec).dtype.itemsize
    layouts = [(len(rows), _layout(job, rows)) for rows in job.contrast.groups]

    def passes(size: int) -> Counter:
        counted = Counter()
        for count, shape in layouts:
            common = {"patches": shape["patches"], "grid": shape["grid"], "keep": shape["keep"]}
            source, target = shape["tokens"][job.source], shape["tokens"][job.target]
            _count(counted, count, size, tokens=source, vision=True, **common)
            if not vision:
                _count(counted, count, size, tokens=0, vision=True, decoder=False, **common)
            _count(counted, count, size, tokens=target, vision=vision, backward=True, **common)
        return counted

    def memory(size: int) -> dict[str, int]:
        peaks = []
        for count, shape in layouts:
            common = {"patches": shape["patches"], "grid": shape["grid"], "keep": shape["keep"]}
            pairs, source, target = min(size, count), shape["tokens"][job.source], shape["tokens"][job.target]
            recorded = pairs * sum(site_bytes(job.spec, s, source, shape["patches"]) for s in job.sites)
            probes = [site_bytes(job.spec, s, target, shape["patches"]) for s in job.sites]
            forward = graph_bytes(config, target, shape["patches"], shape["grid"], shape["keep"], vision, itemsize)
            graph = pairs * (forward + 2 * sum(probes) + 3 * max(probes) * FLOAT32 // itemsize)
            unprobed = [Pass(pairs, source, vision=True, **common)]
            unprobed += [] if vision else [Pass(pairs, 0, vision=True, decoder=False, **common)]
            peaks.append(Counter({"pixels": _pixels(pairs, shape), "recorded activations": recorded,
                                  "largest pass": max([graph] + [_call(job, p) for p in unprobed])}))  # fmt: skip
        return _peak(peaks)

    return Calls(passes, memory, len(job.pairs) * len(job.sites) * groups, max(count for count, _ in layouts),
                 "attribute fewer sites, or pass a larger budget_gib", tuple(job.sites))  # fmt: skip


def _layer_calls(job, layers: int, groups: int, dense_layers: int, extra, advice: str) -> Calls:
    """``knockout_sweep``'s and ``head_sweep``'s calls, per layout: the corrupted run, the clean image tokens, the
    unedited clean run, then each of ``layers`` layers' ``groups`` copies per pair, ``size`` at a time. Held: the
    image tokens, ``extra(rows, tokens)``'s fixed parts, and the largest call with its bytes per copy."""
    call = functools.lru_cache(maxsize=None)(functools.partial(_call, job))  # thousands of copies, a few kinds
    layouts = []
    for rows in job.contrast.groups:
        shape = _layout(job, rows)
        common = {"patches": shape["patches"], "grid": shape["grid"], "keep": shape["keep"]}
        clean = shape["tokens"]["clean"]
        layouts.append((rows, shape, common, clean, _unedited(len(rows), shape["tokens"]["corrupted"], clean, common),
                        *extra(len(rows), clean)))  # fmt: skip

    def copy(rows: int, tokens: int, common: dict) -> Pass:
        return Pass(rows, tokens, vision=False, dense_layers=dense_layers, **common)

    def passes(size: int) -> Counter:
        counted = Counter()
        for rows, _, common, clean, unedited, _, _ in layouts:
            counted.update(unedited)
            _count(counted, len(rows) * groups, size, layers, tokens=clean, vision=False, dense_layers=dense_layers,
                   **common)
        return counted

    def memory(size: int) -> dict[str, int]:
        peaks = []
        for rows, shape, common, clean, unedited, fixed, per_copy in layouts:
            chunk = min(size, len(rows) * groups)
            largest = max([call(p) for p in unedited] + [call(copy(chunk, clean, common), dense_layers > 0)
                                                         + chunk * per_copy])  # fmt: skip
            peaks.append(Counter({"pixels": _pixels(len(rows), shape),
                                  "image tokens": _image_tokens(job, len(rows), shape), **fixed,
                                  "largest pass": largest}))  # fmt: skip
        return _peak(peaks)

    return Calls(passes, memory, len(job.pairs) * layers * groups,
                 max(len(rows) for rows, *_ in layouts) * groups, advice)  # fmt: skip


def knockout_calls(job, layers: int, groups: int) -> Calls:
    """``knockout_sweep`` of ``layers`` layers and ``groups`` cell groups. Per copy, its knockout masks: the forbidden
    pairs and the edited boolean mask (one byte per query and key), and the kernel's own: sdpa turns a boolean mask
    into a float one (through a negated copy), eager fills its float mask into a new one."""
    itemsize = unwrap(job.spec).dtype.itemsize
    per_pair = 1 + itemsize if kernel(job.spec.config) == "eager" else 3 + itemsize
    return _layer_calls(job, layers, groups, 1, lambda rows, tokens: ({}, per_pair * tokens**2),
                        "knock out fewer layers, or pass a larger budget_gib")  # fmt: skip


def head_calls(job, layers: int, ablation: str) -> Calls:
    """``head_sweep`` of ``layers`` layers' heads: mean and patch ablation hold both runs' head outputs and the
    replacements at every layer, and per copy its mixed head outputs and their projection."""
    config, itemsize = job.spec.config, unwrap(job.spec).dtype.itemsize
    width = text_config(config).hidden_size

    def extra(rows: int, tokens: int) -> tuple[dict[str, int], int]:
        if ablation == "zero":
            return {}, 0
        return {"recorded head outputs": 3 * rows * layers * tokens * width * itemsize}, 2 * tokens * width * itemsize

    return _layer_calls(job, layers, text_config(config).num_attention_heads, 0, extra,
                        "ablate the heads of fewer layers, or pass a larger budget_gib")  # fmt: skip
