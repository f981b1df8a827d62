"""GPU check: the package's guarantees on a randomly initialised Qwen2.5-VL-7B, one 1080 x 1920 picture, bf16.

The released 7B layout (``anatomy/configs``, ``shipped_config("7B")``) is built directly on the GPU in
bf16 with transformers' own random initialisation (N(0, 0.02), seed 0; seconds, no download): its
answers mean nothing, its mechanics are the real model's. One picture (``demo_image(1080, 1920)``,
kept at full size: 78 x 138 patches, 2,691 image tokens) and a short question. Five checks, one
table row each:

1. capture leaves the logits bit-identical (``torch.equal``; the patch embedding, every vision
   block's output, the merger and every decoder layer's output captured, copied to the CPU);
2. both attention recorders (``anatomy.vision.attention``, ``anatomy.decoder.attention``) against
   transformers' eager attention, read in the same eager forward pass: a window block and a
   full-attention block of the vision tower (all heads), every decoder layer (all heads, 16 query
   rows); the largest difference of a probability, against ``TOLERANCE`` (1e-2 in bf16);
3. an identity intervention (sites patched with their own recording of the same prompt) leaves the
   logits bit-identical, and the same edits recorded on another picture do change them;
4. a window-group activation-patching sweep: the corrupted picture's activations patched into the
   clean run at 3 decoder layer outputs, one group of image cells per vision window (4 x 4 cells,
   112 px) at a time, ``--batch-rows`` copies per forward pass; its time and peak GPU memory beside
   ``anatomy.causal.cost``'s FLOP count and time estimate;
5. attribution patching of the same two pictures at the sweep's sites, one group per vision window
   (2 forward passes and 1 backward): its time and peak memory beside ``anatomy.causal.plan``'s, planned
   first (with the smallest budget that lets it run when the default is too small) and run as planned.

Needs torch>=2.4 and transformers>=5.0 (``NEEDS``; the package's own lower bounds): with an older
or missing one, or a missing dependency of the package, it stops with one line. A failed check
makes the exit status 1. Sized for well under 10 minutes on one H200: the sweep is 540 copies of the
2,718-token prompt, 20 PFLOP, 50 s at 40% of the bf16 peak by ``anatomy.causal.cost``. Each check
reports on stderr as it ends, and ``--out`` is rewritten after each, so a run cut short keeps its rows.

    python benchmarks/gpu_check.py --out gpu_check.md       # the 7B on the GPU; .md: the table, else JSON
    python benchmarks/gpu_check.py --model tiny --height 140 --width 196     # the same checks, CPU, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata, util
from pathlib import Path

NEEDS = {"torch": (2, 4), "transformers": (5, 0)}  # pyproject.toml's lower bounds


def missing(version=metadata.version) -> list[str]:
    """What of ``NEEDS`` is absent or older, one phrase each: ``["transformers 4.49.0 is older than 5.0"]``."""
    problems = []
    for name, least in NEEDS.items():
        try:
            found = version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed")
            continue
        if tuple(int(part) for part in re.findall(r"\d+", found)[:2]) < least:
            problems.append(f"{name} {found} is older than {'.'.join(map(str, least))}")
    return problems


def needs(problems: list[str]) -> str:
    """The one line the script stops with."""
    wanted = " and ".join(f"{name}>={'.'.join(map(str, least))}" for name, least in NEEDS.items())
    return f"gpu_check needs {wanted}: {'; '.join(problems)}"


if problems := missing():  # before torch or anatomy is imported: one line, not a traceback
    sys.exit(needs(problems))
if util.find_spec("anatomy") is None:  # run from a checkout where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
try:
    import numpy as np
    import torch
    import transformers
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as modeling
    from PIL import ImageDraw

    from anatomy.capture import capture
    from anatomy.causal import Contrast, intervene, logit_diff, pair, patch, record
    from anatomy.causal.cost import H200_BF16_FLOPS, SweepCost, decoder_flops, vision_flops
    from anatomy.causal.plan import measured_peak, plan
    from anatomy.decoder.attention import record_attention as decoder_recorder
    from anatomy.inputs import demo_image, encode
    from anatomy.kernels import eager
    from anatomy.model import TINY, Specimen, decoder_layers, shipped_config, vision_blocks
    from anatomy.vision.attention import record_attention as vision_recorder
    from anatomy.vision.windows import windows
except ImportError as error:  # a dependency of the package that this machine lacks: one line too
    sys.exit(f"gpu_check cannot import what the anatomy package needs ({error}); pip install -e . in the checkout")

QUESTION = "What is in the picture?"
ALTERED = (0.40, 0.15, 0.75, 0.45)  # (top, left, bottom, right), fractions of the picture: the house, painted over
CAPTURED = ["vision.patch_embed", "vision.blocks.*.output", "vision.merger.output", "decoder.layers.*.output"]
# Largest |recorded - eager| of a probability. bf16 keeps 8 significant bits: eager rounds every score s and
# every probability p to bf16 (errors up to |s| 2^-9 and p 2^-9) where the recorders keep float32, and a score
# error e moves p by about p e. At random init scores are a few units, so a few 1e-3 at most: 1e-2 bounds it
# (the tiny model in bf16 on a CPU: 5e-4; not yet measured on the 7B).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
EFFECT_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}  # a batched copy's effect against the copy alone
UTILISATION = 0.4  # anatomy.causal.cost.sweep_cost's default: the share of the GPU's bf16 peak a sweep reaches


@dataclass
class Check:
    """One row of the table: ``passed`` is None for a check the package cannot run yet."""

    name: str
    passed: bool | None
    numbers: dict = field(default_factory=dict)
    note: str = ""

    def row(self) -> str:
        verdict = {True: "pass", False: "**FAIL**", None: "not implemented yet"}[self.passed]
        numbers = "; ".join(f"{key} {value}" for key, value in self.numbers.items())
        return f"| {self.name} | {verdict} | {numbers} | {self.note} |"


def random_model(name: str, device: str, dtype: torch.dtype) -> Specimen:
    """The shipped ``name`` layout (``"7B"``, ``"tiny"``) with transformers' random initialisation, seed 0,
    built in ``dtype`` directly on ``device``; the global random state is left as it was."""
    with torch.random.fork_rng(), torch.device(device):
        torch.manual_seed(0)
        model = modeling.Qwen2_5_VLForConditionalGeneration._from_config(shipped_config(name), dtype=dtype)
    return Specimen(model.eval(), f"{name} (random)", TINY if name == TINY else "untrained")


def pictures(height: int, width: int):
    """The demo picture and the same picture with the ``ALTERED`` box painted grey."""
    clean = demo_image(height, width)
    corrupted = clean.copy()
    top, left, bottom, right = ALTERED
    ImageDraw.Draw(corrupted).rectangle([left * width, top * height, right * width, bottom * height], fill=(128,) * 3)
    return clean, corrupted


def logits(spec, batch, **options) -> torch.Tensor:
    with torch.no_grad():
        return spec.model(**batch, **options).logits


def largest(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def capture_check(spec, prompt, plain: torch.Tensor) -> Check:
    """1. Logits with ``CAPTURED`` hooked (copies to the CPU, the default) against the plain forward pass."""
    with torch.no_grad(), capture(spec, CAPTURED) as cache:
        captured = spec.model(**prompt).logits
    expected = 2 + len(vision_blocks(spec)) + len(decoder_layers(spec))
    same = torch.equal(captured, plain) and len(cache) == expected
    return Check("capture leaves the logits bit-identical", same,
                 {"sites captured": f"{len(cache)}/{expected}", "max abs logit diff": largest(captured, plain)})


@contextlib.contextmanager
def eager_vision_weights(spec, blocks: list[int]):
    """transformers' own eager probabilities of vision ``blocks``: {block: [(heads, n, n) per segment]}."""
    chosen = {vision_blocks(spec)[b].attn: b for b in blocks}
    seen = {b: [] for b in blocks}
    original = modeling.eager_attention_forward

    def recorded(module, *args, **kwargs):
        output, weights = original(module, *args, **kwargs)
        if module in chosen:
            seen[chosen[module]].append(weights[0])
        return output, weights

    modeling.eager_attention_forward = recorded
    try:
        yield seen
    finally:
        modeling.eager_attention_forward = original


def attention_check(spec, prompt) -> Check:
    """2. Both recorders hooked on the eager forward pass whose own probabilities are the reference."""
    blocks = [0, spec.config.vision_config.fullatt_block_indexes[0]]  # a window block, the first full one
    length = prompt["input_ids"].shape[1]
    rows = sorted(set(torch.linspace(0, length - 1, 16).long().tolist()))  # text, image tokens, the last row
    layers = list(range(len(decoder_layers(spec))))
    with (torch.no_grad(), eager(spec.model), eager_vision_weights(spec, blocks) as reference,
          vision_recorder(spec, prompt, blocks, reduce="none") as maps,
          decoder_recorder(spec, prompt, layers, rows=rows) as recorder):
        output = spec.model(**prompt, output_attentions=True)
    segments = [(mine, theirs) for b in blocks for mine, theirs in zip(maps[b].segments, reference[b])]
    vision = max(largest(mine, theirs) for mine, theirs in segments)
    eager_rows = torch.stack([output.attentions[layer][0][:, rows] for layer in layers]).cpu()  # (layers, H, R, keys)
    decoder = largest(recorder.result().probs, eager_rows)
    tolerance = TOLERANCE[spec.model.dtype]
    complete = all(len(maps[b].segments) == len(reference[b]) > 0 for b in blocks)
    return Check("attention recorders agree with eager attention", complete and max(vision, decoder) <= tolerance,
                 {"vision max abs diff": f"{vision:.2e}", "decoder max abs diff": f"{decoder:.2e}",
                  "tolerance": f"{tolerance:.0e}"},
                 f"vision blocks {blocks} (all heads, {len(segments)} segments); decoder layers 0-{layers[-1]}, "
                 f"all heads, {len(rows)} query rows")


def identity_edits(source, cells, last_layer: int) -> list:
    """Whole sites and one window group's cells, from the patch embedding to the last decoder layer."""
    return [patch("vision.patch_embed", source), patch("vision.blocks.*.output", source, cells=cells),
            patch("vision.merger.output", source), patch("decoder.layers.*.output", source, cells=cells),
            patch(f"decoder.layers.{last_layer}.output", source)]


def identity_check(spec, prompt, corrupted, plain: torch.Tensor, cells) -> Check:
    """3. ``CAPTURED`` sites patched from a recording of this prompt; the same edits recorded on ``corrupted``."""
    last = len(decoder_layers(spec)) - 1
    identity, control = [], []
    for batch, result in ((prompt, identity), (corrupted, control)):
        with intervene(spec, identity_edits(record(spec, batch, CAPTURED), cells, last)):
            result.append(logits(spec, prompt))
    moved = largest(control[0], plain)
    return Check("identity intervention leaves the logits bit-identical",
                 torch.equal(identity[0], plain) and moved > 0,
                 {"max abs logit diff": largest(identity[0], plain),
                  "control (from the other picture)": f"{moved:.3g}"},
                 f"{len(CAPTURED)} site patterns, whole sites and one window group's {len(cells)} cells")


def window_groups(grid_thw: torch.Tensor, vision_config) -> list[list[tuple[int, int]]]:
    """The image's cells (merged tokens), grouped by the vision window that holds them; raster order in each.

    On the released models a window is 112 px: 4x4 cells, fewer at the right and bottom edges.
    """
    merge = vision_config.spatial_merge_size
    window = windows(grid_thw[0], vision_config).window[0, ::merge, ::merge]  # (cell rows, cell cols): window id
    groups: dict[int, list[tuple[int, int]]] = {}
    for (row, col), w in np.ndenumerate(window):
        groups.setdefault(int(w), []).append((int(row), int(col)))
    return list(groups.values())


def decoder_inputs(spec, prompt) -> tuple[dict, torch.Tensor]:
    """``prompt`` with its image tokens given as ``inputs_embeds`` (layer 0's input), no pixels, so that
    patched copies skip the vision tower; and the clean run's last-position logits."""
    with torch.no_grad(), capture(spec, "decoder.inputs_embeds", device=None) as cache:
        last = spec.model(**prompt, logits_to_keep=1).logits[:, -1]
    inputs = {key: value for key, value in prompt.items() if key != "pixel_values"}
    return inputs | {"inputs_embeds": cache["decoder.inputs_embeds"]}, last


def patched_last(spec, inputs: dict, source, variants, groups) -> torch.Tensor:
    """(copies, vocab) float32 last-position logits of one forward pass; copy i patched at ``variants[i]``."""
    count = len(variants)
    batch = {key: value.repeat(count, *[1] * (value.ndim - 1)) for key, value in inputs.items()}
    taken = source.take([0] * count)
    edits = [patch(site, taken, cells=groups[g], rows=[i]) for i, (site, g) in enumerate(variants)]
    with torch.no_grad(), intervene(spec, edits):
        return spec.model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1].float()


def synchronized_seconds(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def sweep_sites(spec) -> list[str]:
    """Three decoder layer outputs: the first, the middle and the last but one (the last's cells cannot reach
    the last position)."""
    layers = len(decoder_layers(spec))
    return [f"decoder.layers.{i}.output" for i in (0, (layers - 1) // 2, layers - 2)]


def sweep_check(spec, prompt, corrupted, batch_rows: int) -> Check:
    """4. Window-group patching from ``corrupted`` into ``prompt`` at ``sweep_sites``, timed and measured.

    effect = |patched - clean| / |corrupted - clean| over the last position's logits: 0 unchanged, 1 as far
    as the corrupted run.
    """
    sites = sweep_sites(spec)
    groups = window_groups(prompt["image_grid_thw"].cpu(), spec.config.vision_config)
    inputs, clean = decoder_inputs(spec, prompt)
    corrupt = logits(spec, corrupted, logits_to_keep=1)[:, -1]
    source = record(spec, corrupted, sites)
    reused = torch.equal(logits(spec, inputs, logits_to_keep=1)[:, -1], clean)
    with intervene(spec, [patch(sites[0], source)]):
        whole = torch.equal(logits(spec, inputs, logits_to_keep=1)[:, -1], corrupt)
    span = float(torch.linalg.vector_norm(corrupt.float() - clean.float()))
    variants = [(site, g) for site in sites for g in range(len(groups))]
    if spec.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(spec.device)
    start, distances = synchronized_seconds(spec.device), []
    for first in range(0, len(variants), batch_rows):
        rows = patched_last(spec, inputs, source, variants[first : first + batch_rows], groups)
        distances.append(torch.linalg.vector_norm(rows - clean.float(), dim=-1))
    seconds = synchronized_seconds(spec.device) - start
    effects = (torch.cat(distances) / span).reshape(len(sites), len(groups)).cpu()
    alone = float(torch.linalg.vector_norm(patched_last(spec, inputs, source, variants[:1], groups) - clean.float()))
    drift = abs(alone / span - float(effects[0, 0]))
    return sweep_row(spec, prompt, sites, groups, effects, seconds, batch_rows, {
        "decoder-only run = clean run": reused, f"whole {sites[0]} patched = corrupted run": whole,
        "batched copy = the copy alone": drift <= EFFECT_TOLERANCE[spec.model.dtype],
        "effects finite": bool(torch.isfinite(effects).all()) and span > 0}, drift)


def painted(groups, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(groups,) bool: the groups with a cell inside the ``ALTERED`` box."""
    _, height, width = (int(v) // merge for v in grid_thw[0])  # cells
    top, left, bottom, right = ALTERED
    return torch.tensor([any(top * height < r + 1 and r < bottom * height and left * width < c + 1 and c < right * width
                             for r, c in group) for group in groups])


def sweep_row(spec, prompt, sites, groups, effects, seconds, batch_rows, verdicts: dict, drift: float) -> Check:
    """The sweep's row: its checks, time against ``anatomy.causal.cost``, peak memory and where the effect is."""
    config, grid = spec.config, prompt["image_grid_thw"].cpu()
    length, patches = prompt["input_ids"].shape[1], int(grid[0].prod())
    cells = sum(len(group) for group in groups)
    plan = SweepCost(patches, cells, length, 0, effects.numel(), vision_flops(config, patches),
                     decoder_flops(config, length), H200_BF16_FLOPS, UTILISATION)
    site, group = divmod(int(effects.argmax()), len(groups))
    (top, left), (bottom, right) = groups[group][0], groups[group][-1]
    inside = painted(groups, grid, config.vision_config.spatial_merge_size)
    numbers = {
        "copies": f"{len(sites)} sites x {len(groups)} window groups = {effects.numel()}, {batch_rows} per pass",
        "measured": f"{seconds:.3g} s ({plan.flops / seconds / 1e12:.3g} TFLOP/s)",
        "estimate": f"{plan.seconds:.3g} s ({plan.flops / 1e12:.3g} TFLOP at {UTILISATION:.0%} of an H200's bf16 peak)",
        "peak GPU memory": peak_memory(spec),
        "largest effect": f"{float(effects.max()):.3f} ({sites[site]}, cells {top}-{bottom} x {left}-{right})",
        "mean effect, painted / other groups": " / ".join(
            f"{float(effects[:, chosen].mean()):.3f}" for chosen in (inside, ~inside)),
        "batched vs alone": f"{drift:.1e} (tolerance {EFFECT_TOLERANCE[spec.model.dtype]:.0e})",
    }
    note = "; ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in verdicts.items())
    return Check("window-group patching sweep", all(verdicts.values()), numbers, note)


def attribution_check(spec, clean, altered) -> Check:
    """5. Attribution patching of ``altered`` into ``clean`` at ``sweep_sites``, one group per vision window:
    planned (``anatomy.causal.plan``; with the smallest budget that lets it run if the default refuses it), then
    run as planned, its time and the peak of torch's allocations (the weights apart) beside the plan's. The
    metric is the logit difference of two colour words: random weights' answers mean nothing, its mechanics do."""
    contrast = Contrast([pair(spec, clean, QUESTION, corrupted_image=altered, max_pixels=None)])
    metric, sites = logit_diff(spec, "red", "blue"), sweep_sites(spec)
    planned = plan(spec, contrast, metric, sweep="attribution", sites=sites, cells="window")
    if planned.refusal:
        planned = plan(spec, contrast, metric, sweep="attribution", sites=sites, cells="window",
                       budget_gib=planned.least_budget_gib)
    start = synchronized_seconds(spec.device)
    found, peak = measured_peak(planned.run, spec.device)
    seconds = synchronized_seconds(spec.device) - start
    effects = found.cells.effects[0]  # (sites, windows)
    estimate = planned.peak_bytes - planned.memory["weights"]
    site, group = divmod(int(np.nanargmax(np.abs(effects))), effects.shape[1])
    numbers = {
        "estimates": f"{len(sites)} sites x {effects.shape[1]} window groups = {effects.size}, "
                     f"{found.cells.forward_passes} forward passes and 1 backward",
        "measured": f"{seconds:.3g} s; peak {peak / 2**30:.3g} GiB beyond the weights",
        "plan": f"{planned.seconds:.3g} s; peak {estimate / 2**30:.3g} GiB beyond the weights "
                f"(budget_gib {planned.budget_gib:.3g})",
        "largest effect (absolute)": f"{float(np.abs(effects[site, group])):.3f} ({sites[site]}, window group {group})",
    }
    verdicts = {"effects finite": bool(np.isfinite(effects).all()), "peak within the plan's": peak <= estimate}
    note = "; ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in verdicts.items())
    return Check("attribution patching", all(verdicts.values()), numbers, note)


def peak_memory(spec) -> str:
    if spec.device.type != "cuda":
        return "n/a (CPU)"
    weights = sum(p.numel() * p.element_size() for p in spec.model.parameters())
    return f"{torch.cuda.max_memory_allocated(spec.device) / 2**30:.1f} GiB (weights {weights / 2**30:.1f} GiB)"


def checks(spec, prompt, corrupted, batch_rows: int, images: tuple):
    """The five checks in order, each yielded as it ends; ``images``: the clean and altered pictures of the
    prompts, which attribution pairs itself."""
    plain = logits(spec, prompt)
    groups = window_groups(prompt["image_grid_thw"].cpu(), spec.config.vision_config)
    yield capture_check(spec, prompt, plain)
    yield attention_check(spec, prompt)
    yield identity_check(spec, prompt, corrupted, plain, groups[0])
    del plain
    yield sweep_check(spec, prompt, corrupted, batch_rows)
    yield attribution_check(spec, *images)


def header(spec, prompt, built: float) -> dict:
    """What the table ran on: model, device (the GPU's name), dtype, versions, picture."""
    height, width = prompt.image.height, prompt.image.width
    _, rows, cols = prompt["image_grid_thw"][0].tolist()
    merge = spec.config.vision_config.spatial_merge_size
    device = torch.cuda.get_device_name(spec.device) if spec.device.type == "cuda" else "CPU"
    return {
        "model": f"{spec!r}", "device": device, "dtype": str(spec.model.dtype).removeprefix("torch."),
        "torch": torch.__version__, "CUDA": torch.version.cuda, "transformers": transformers.__version__,
        "model built in": f"{built:.1f} s",
        "picture": f"{height} x {width} (height x width), {rows} x {cols} patches, "
                   f"{rows * cols // merge**2:,} image tokens, {prompt['input_ids'].shape[1]:,} prompt tokens",
    }


def markdown(result: dict) -> str:
    lines = [f"- {key}: {value}" for key, value in result["header"].items()]
    lines += [f"- all checks: {result['seconds']:.0f} s", "", "| check | verdict | numbers | notes |",
              "|---|---|---|---|"]
    return "\n".join(lines + [Check(**check).row() for check in result["checks"]]) + "\n"


def run(model: str, device: str, dtype: torch.dtype, height: int, width: int, batch_rows: int, out: Path | None):
    """Every check on ``model``, reported on stderr and written to ``out`` (JSON, or markdown for ``.md``) as
    each ends: ``{"header": ..., "checks": [...], "seconds": ...}``."""
    start = time.perf_counter()
    spec = random_model(model, device, dtype)
    built = time.perf_counter() - start
    clean, altered = pictures(height, width)
    prompt, corrupted = (encode(spec, picture, QUESTION, max_pixels=None) for picture in (clean, altered))
    result = {"header": header(spec, prompt, built), "checks": [], "seconds": 0.0}
    for check in checks(spec, prompt, corrupted, batch_rows, (clean, altered)):
        result["checks"].append(asdict(check))
        result["seconds"] = time.perf_counter() - start
        print(f"[{result['seconds']:6.1f} s] {check.row()}", file=sys.stderr, flush=True)
        if out:
            out.write_text(markdown(result) if out.suffix == ".md" else json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the checks, print the table; 0 when no check failed."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("7B", TINY), default="7B" if cuda else TINY,
                        help="7B: the released layout, random weights (the default with CUDA); tiny: the test model")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"),
                        help="default: bfloat16 on CUDA (the released dtype), float32 on the CPU")
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--batch-rows", type=int, default=16, help="patched copies per forward pass of the sweep")
    parser.add_argument("--out", type=Path, help="also write the results here: markdown for .md, else JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.model == "7B" and device.type != "cuda":
        parser.error(f"--model 7B needs a CUDA GPU (--device {args.device}); --model tiny runs the checks on the CPU")
    if device.type == "cuda" and not cuda:
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU")
    if args.batch_rows < 1:
        parser.error(f"--batch-rows {args.batch_rows}: expected at least 1 patched copy per forward pass")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    result = run(args.model, args.device, dtype, args.height, args.width, args.batch_rows, args.out)
    print(markdown(result), end="")
    return 0 if all(check["passed"] is not False for check in result["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
