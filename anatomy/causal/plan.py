"""Plan a sweep before running it: rows, forward passes, peak memory and time, for any specimen or released size.

>>> p = plan("7B", sweep="patching", image_size=(448, 448), cells="window", device="H100")
>>> print(p)                         # nothing runs: the 7B is a skeleton on the meta device
>>> p = plan(spec, contrast, ld, sweep="knockout")      # time from one pass measured on spec
>>> result = p.run()                 # the sweep itself, with exactly the arguments planned

``sweep`` names the function planned; ``options`` are its own keyword arguments, defaults included:

    "patching"     anatomy.causal.patching_sweep      sites, cells, direction, budget_gib
    "positions"    anatomy.causal.position_sweep      sites, direction, budget_gib
    "attribution"  anatomy.causal.attribution         sites, cells, direction, budget_gib
    "knockout"     anatomy.causal.knockouts.knockout_sweep     layers, cells, budget_gib
    "heads"        anatomy.causal.heads.head_sweep    layers, ablation, budget_gib

What it counts:

- rows: prompts run, summed over the model calls (a call on 8 copies is 8 rows); forward passes: the
  model calls, each full (vision tower and decoder), vision only (the pictures' image tokens, computed
  once for the copies that reuse them) or decoder only. Attribution's backward pass is counted apart.
- FLOPs: ``anatomy.causal.cost`` per call; a backward as one more forward (gradients of activations only).
- time: with ``device=None`` on a specimen with weights, one pass is run and timed, the vision tower
  apart: the sweep's heaviest kind of call, on the clean prompt (attribution's: its probed forward pass
  and its backward, ``measure_rate``). Every call then takes its FLOPs in the tower and in the decoder at
  the seconds per FLOP measured there. The pass may be the process's first, which runs slower: then the
  estimate is high. Otherwise ``device`` names a GPU of ``PEAK_FLOPS`` (default ``"H100"``) run at
  ``utilisation`` of its dense bf16 peak.
- peak memory: the weights, what the sweep keeps throughout (pixels, recorded activations, image tokens) and
  its largest call, each call's peak counted tensor by tensor (``anatomy.causal.cost.pass_bytes``,
  ``graph_bytes``): an upper bound, within 1.5x of the peak measured on tiny (``benchmarks/plan_memory.py``).
  The weights apart, this peak is what ``budget_gib`` bounds: the sweep runs as many copies per pass as fit
  it, by this same count (``anatomy.causal.calls``, where the calls and bytes are counted); a sweep that one
  copy per pass does not fit is planned with one copy per pass and carries the refusal it would raise, which
  names the least budget that runs it (``least_budget_gib``).

Sizes print in GiB (2^30 bytes) with two decimals, in MiB (2^20 bytes) below 1 GiB.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from anatomy.capture.sites import NONE
from anatomy.causal.attribution import attribution, probes
from anatomy.causal.batches import with_image_tokens
from anatomy.causal.calls import (
    Calls,
    Pass,
    attribution_calls,
    head_calls,
    knockout_calls,
    least_budget,
    patching_calls,
)
from anatomy.causal.contrast import Contrast, Pair, pair
from anatomy.causal.cost import PEAK_FLOPS, size_text
from anatomy.causal.groups import cell_groups
from anatomy.causal.heads import head_job, head_sweep
from anatomy.causal.knockouts import knockout_job, knockout_sweep
from anatomy.causal.metrics import logit_diff
from anatomy.causal.sweeps import patching_sweep, position_sweep
from anatomy.causal.sweeps import plan as check_job
from anatomy.inputs import demo_image
from anatomy.model import Specimen, multimodal, unwrap
from anatomy.sources import load

SWEEPS = {"patching": patching_sweep, "positions": position_sweep, "attribution": attribution,
          "knockout": knockout_sweep, "heads": head_sweep}  # fmt: skip
UTILISATION = 0.4  # the share of a GPU's dense bf16 peak a sweep is assumed to reach (anatomy.causal.cost)
QUESTION = "What colour is the house?"


@dataclass
class Plan:
    """A sweep's size and cost before it runs; ``run()`` runs it. ``passes``: each kind of call and how many."""

    sweep: str
    model: str
    config: object = field(repr=False)
    pairs: int
    shape: str
    copies: int
    batch_size: int
    passes: dict[Pass, int]
    memory: dict[str, int]
    budget_gib: float
    refusal: str | None
    least_budget_gib: float  # the least budget_gib that runs the sweep (one copy per pass), 4 digits rounded up
    seconds_per_flop: tuple[float, float]  # in the vision tower, in the decoder
    timing: str
    call: functools.partial = field(repr=False)

    def run(self):
        """Run the sweep planned, with exactly the arguments planned (on a specimen with weights)."""
        spec = self.call.keywords["spec"]
        if not spec.has_weights:
            raise ValueError(f"{spec.source!r} is a skeleton without weights: a plan of it runs nothing; load a "
                             f"specimen with weights to run the sweep")  # fmt: skip
        return self.call()

    @property
    def forward_passes(self) -> int:
        return sum(self.passes.values())

    @property
    def backward_passes(self) -> int:
        return sum(count for p, count in self.passes.items() if p.backward)

    @property
    def rows(self) -> int:
        return sum(p.rows * count for p, count in self.passes.items())

    @property
    def flops(self) -> float:
        return sum(p.flops(self.config) * count for p, count in self.passes.items())

    @property
    def seconds(self) -> float:
        vision, text = self.seconds_per_flop
        return sum(count * (p.parts(self.config)[0] * vision + p.parts(self.config)[1] * text)
                   for p, count in self.passes.items())  # fmt: skip

    @property
    def peak_bytes(self) -> int:
        return sum(self.memory.values())

    @property
    def beside_weights_gib(self) -> float:
        """The peak less the weights in GiB, rounded up as budgets are (``anatomy.causal.calls.least_budget``): what
        ``budget_gib`` bounds; at one copy per pass, the least budget that runs the sweep."""
        return least_budget(self.peak_bytes - self.memory["weights"])

    def __str__(self) -> str:
        kinds = Counter()
        for p, count in self.passes.items():
            kinds["full" if p.vision and p.decoder else "vision only" if p.vision else "decoder only"] += count
        backward = f", {self.backward_passes:,} backward" if self.backward_passes else ""
        parts = ", ".join(f"{name} {size_text(size)}" for name, size in self.memory.items())
        budget = self.refusal or (f"within budget_gib={self.budget_gib:g} (the weights apart); the least that runs "
                                  f"it is budget_gib={self.least_budget_gib:g}")  # fmt: skip
        return "\n".join([
            f"plan: {self.sweep} on {self.model}, {self.pairs} pair(s), {self.shape}",
            (f"  {self.copies:,} (site, group) estimates, {self.batch_size:,} pair(s) per pass"
             if self.sweep == "attribution" else f"  {self.copies:,} edited copies, {self.batch_size:,} per pass"),
            f"  rows {self.rows:,}; forward passes {self.forward_passes:,} ("
            + ", ".join(f"{count:,} {kind}" for kind, count in kinds.items()) + f"){backward}",
            f"  {self.flops:.3g} FLOP, about {duration(self.seconds)} ({self.timing})",
            (f"  peak memory about {size_text(self.peak_bytes)}, {self.beside_weights_gib:g} GiB of it beside the "
             f"weights (what budget_gib bounds): {parts}"),
            f"  {budget}",
        ])  # fmt: skip


def duration(seconds: float) -> str:
    """``0.25`` -> ``'0.25 s'``, ``4000`` -> ``'1 h 6 min'``."""
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes = seconds / 60
    return f"{minutes:.3g} min" if minutes < 60 else f"{int(minutes // 60)} h {int(minutes % 60)} min"


@dataclass(repr=False)
class Counted(Specimen):
    """A skeleton whose prompts are encoded on the CPU: its own device (meta) holds no data. Counted, never run."""

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


def countable(spec) -> Specimen:
    """``spec``, or for a skeleton the same model as a ``Counted``, so that pictures can be encoded for a plan."""
    if spec.has_weights or isinstance(spec, Counted):
        return spec
    return Counted(spec.model, spec.source, spec.kind, lambda: spec.processor)  # the skeleton's own, built once


def example_contrast(spec, height: int, width: int) -> Contrast:
    """One pair of pictures of ``height`` x ``width`` px (a demo picture; a box painted black in the corrupted one),
    asked ``QUESTION``: the prompt shapes a sweep on pictures of that size runs on."""
    clean = np.array(demo_image(height, width))
    corrupted = clean.copy()
    corrupted[height // 4 : height // 2, width // 4 : width // 2] = 0
    return Contrast([pair(spec, clean, QUESTION, corrupted_image=corrupted)])


def plan(spec, contrast=None, metric=None, *, sweep: str = "patching", image_size: tuple[int, int] = (448, 448),
         device: str | None = None, utilisation: float = UTILISATION, **options) -> Plan:  # fmt: skip
    """Plan ``sweep`` of ``contrast`` (None: ``example_contrast`` of ``image_size``, (height, width) px) with
    ``metric`` (None: ``logit_diff`` of 'red' and 'blue') on ``spec`` (a Specimen, or a source ``anatomy.load``
    takes: ``"7B"`` is the skeleton). Runs no model, except the one timing pass (see the module docstring)."""
    spec = countable(load(spec) if isinstance(spec, str) else spec)
    if sweep not in SWEEPS:
        raise ValueError(f"sweep={sweep!r}; expected one of {sorted(SWEEPS)}")
    if contrast is None:
        contrast = example_contrast(spec, *image_size)
    contrast = contrast if isinstance(contrast, Contrast) else Contrast([contrast] if isinstance(contrast, Pair)
                                                                       else contrast)  # fmt: skip
    metric = logit_diff(spec, "red", "blue") if metric is None else metric
    try:
        bound = inspect.signature(SWEEPS[sweep]).bind(spec, contrast, metric, **options)
    except TypeError as error:
        raise TypeError(f"{sweep} takes no such option ({error}); its options: {_options(sweep)}") from None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    calls = sweep_calls(sweep, arguments)
    refusal = calls.refusal(arguments["budget_gib"])
    size = 1 if refusal else calls.batch_size(arguments["budget_gib"])
    passes, memory = calls.passes(size), calls.memory(size)
    itemsize = unwrap(spec).dtype.itemsize
    weights = sum(p.numel() for p in unwrap(spec).parameters()) * itemsize
    timed_here = device is None and spec.has_weights and not refusal  # a job over budget runs nothing
    rate, timing = _rate(spec, contrast, passes, calls.probed, None if timed_here else device or "H100", utilisation)
    first = contrast.pairs[0]
    (_, rows, cols), length = first.clean.grid_thw[0].tolist(), first.clean["input_ids"].shape[1]
    side = spec.config.vision_config.patch_size
    shape = (f"pictures {rows * side} x {cols * side} px: {first.grid[0]} x {first.grid[1]} cells, {rows * cols} "
             f"patches, {length} tokens")  # fmt: skip
    return Plan(sweep, f"{spec.source} ({spec.kind}, {unwrap(spec).dtype})", spec.config, len(contrast.pairs), shape,
                calls.copies, size, dict(passes), {"weights": weights, **memory}, arguments["budget_gib"], refusal,
                calls.least_gib,
                rate, timing, functools.partial(SWEEPS[sweep], **arguments))  # fmt: skip


def sweep_calls(sweep: str, arguments: dict) -> Calls:
    """The calls of ``sweep`` called with ``arguments`` (its own, by name), checked as the sweep checks them: the
    count its batch size and refusal come from."""
    spec, contrast, metric = arguments["spec"], arguments["contrast"], arguments["metric"]
    if sweep == "knockout":
        job, layers, groups = knockout_job(spec, contrast, metric, arguments["layers"], arguments["cells"])
        return knockout_calls(job, len(layers), len(groups))
    if sweep == "heads":
        job, layers = head_job(spec, contrast, metric, arguments["layers"], arguments["ablation"])
        return head_calls(job, len(layers), arguments["ablation"])
    job = check_job(spec, contrast, metric, arguments["sites"], arguments["direction"], vision=sweep != "positions")
    if sweep == "positions":
        return patching_calls(job, None)
    groups = len(cell_groups(spec, job.pairs[0].grid, arguments["cells"]))
    return (attribution_calls if sweep == "attribution" else patching_calls)(job, groups)


def _options(sweep: str) -> list[str]:
    return list(inspect.signature(SWEEPS[sweep]).parameters)[3:]


def _rate(spec, contrast: Contrast, passes: Counter, probed, device: str | None,
          utilisation: float) -> tuple[tuple, str]:  # fmt: skip
    """Seconds per FLOP in the vision tower and in the decoder: measured by one pass on ``spec`` (``device`` None,
    ``measure_rate``), or from ``device``'s peak at ``utilisation``."""
    if device is None:
        return measure_rate(spec, contrast, passes, probed)
    if device not in PEAK_FLOPS:
        raise ValueError(f"device={device!r}; expected one of {sorted(PEAK_FLOPS)}, or None to time a pass here")
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation={utilisation!r}; expected a share of the peak in (0, 1]")
    rate = 1 / (PEAK_FLOPS[device] * utilisation)
    return (rate, rate), f"an {device} at {utilisation:.0%} of its {PEAK_FLOPS[device] / 1e12:.0f} TFLOP/s bf16 peak"


def measure_rate(spec, contrast: Contrast, passes: Counter, probed=()) -> tuple[tuple[float, float], str]:
    """Time the heaviest call of ``passes`` as the sweep makes it, on as many copies of the first pair's clean
    prompt as it has rows: the pictures' image tokens first (the vision tower, timed apart, on as many pictures
    as the heaviest call that runs it: a decoder-only call's copies reuse their pictures' tokens), then the
    decoder on them. A call with a backward (attribution's) runs with zero probes at the sites ``probed``, then
    its backward from the last position's logits to the probes; the backward's time is the decoder's until the
    image tokens' gradient arrives, the tower's after it (vision sites only: otherwise the tower runs without
    gradients, as in the sweep). Returns seconds per FLOP in the tower and in the decoder, FLOPs counted as
    ``Pass.parts`` counts them (a backward as one more forward: the no-grad calls of the same sweep are then
    estimated high, the backward being slower than a forward), and what was timed."""
    config, bare, spent = spec.config, unwrap(spec), {}
    heaviest = max(passes, key=lambda p: p.flops(config))
    rows, backward = heaviest.rows, heaviest.backward
    pictures = rows if heaviest.vision else max(p.rows for p in passes if p.vision)  # the tower's largest call
    through_tower = backward and any(site.order != NONE for site in probed)
    prompt = contrast.pairs[0].clean
    batch = {key: torch.cat([value] * pictures) for key, value in prompt.items()}
    (_, height, width), length = prompt.grid_thw[0].tolist(), prompt["input_ids"].shape[1]
    vision = Pass(pictures, 0, height * width, (height, width), vision=True, decoder=False).parts(config)[0]
    text = Pass(rows, length, height * width, (height, width), vision=False).parts(config)[1]

    def clock(name: str) -> None:
        _synchronize(spec.device)
        spent.setdefault(name, time.perf_counter())

    with probes(bare, list(probed) if backward else []) as made:
        clock("start")
        with torch.set_grad_enabled(through_tower):
            images = multimodal(spec).get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
        clock("tower")
        with torch.set_grad_enabled(backward):
            copies = [row % pictures for row in range(rows)]  # decoder-only copies share their pictures' tokens
            logits = bare(**with_image_tokens(batch, images, copies), logits_to_keep=1, use_cache=False).logits
        clock("decoder")
        if backward:
            if through_tower:
                images[0].register_hook(lambda grad: clock("image tokens' gradient"))
            torch.autograd.grad(logits.float().sum(), [probe for probe, _ in made.values()])
            clock("backward")
    tower_seconds = spent["tower"] - spent["start"]
    total = spent.get("backward", spent["decoder"]) - spent["start"]
    if through_tower:
        tower_seconds += spent["backward"] - spent["image tokens' gradient"]
    rate = tower_seconds / (vision * (1 + through_tower)), (total - tower_seconds) / (text * (1 + backward))
    kind = "forward and backward pass" if backward else "forward pass"
    rows_text = f"{rows} row{'s' * (rows != 1)}"
    tower_text = f"in the vision tower on {pictures} picture{'s' * (pictures != 1)}"
    return rate, (f"one {kind} of {rows_text} measured on {spec.device}: {total:.3g} s, {tower_seconds:.3g} s of it "
                  f"{tower_text}")  # fmt: skip


def measured_peak(run, device) -> tuple[object, int]:
    """``run()``'s result and the peak of torch's allocations it made, in bytes: what was allocated before it (the
    weights) apart, to set beside ``Plan.peak_bytes - Plan.memory["weights"]``. On a GPU from the CUDA allocator's
    statistics; on a CPU, whose allocator keeps none, from torch's profiler (``profile_memory``: every allocation
    and free, summed in time order; tracemalloc and the resident size do not see torch's blocks one by one). For
    benchmarks and tests; the package itself never calls it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = run()
        return result, torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = run()
    events = sorted((e.start_ns(), e.nbytes()) for e in profiler.profiler.kineto_results.events()
                    if e.name() == "[memory]")  # fmt: skip
    return result, int(np.cumsum([0] + [size for _, size in events]).max())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
