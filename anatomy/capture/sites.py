"""Names for the places inside Qwen2.5-VL where activations can be captured.

One table maps the short names the notebooks teach to the modules that
``print(model)`` shows; every module path that ``print(model)`` shows is a
valid name too. Nothing here hard-wires a transformers version: the
towers are found by ``anatomy.model.locate``.

=============================  ==========================================  ===================
short name                     what is captured                            shape
=============================  ==========================================  ===================
vision.pixels                  pixel rows entering the patch embedding     (patches, 1176)
vision.patch_embed             patch embeddings                            (patches, Dv)
vision.position_ids            (row, col) of every patch                   (patches, 2)
vision.rotary.cos / .sin       2D rotary cos/sin of every patch            (patches, Dv/heads)
vision.blocks.{i}.input        residual stream entering block i            (patches, Dv)
vision.blocks.{i}.norm1        RMSNorm before attention                    (patches, Dv)
vision.blocks.{i}.attn.qkv     fused query/key/value projection            (patches, 3*Dv)
vision.blocks.{i}.attn         attention output (after proj)               (patches, Dv)
vision.blocks.{i}.norm2        RMSNorm before the MLP                      (patches, Dv)
vision.blocks.{i}.mlp          SwiGLU MLP output                           (patches, Dv)
vision.blocks.{i}.output       residual stream leaving block i             (patches, Dv)
vision.merger.input            what the merger receives                    (patches, Dv)
vision.merger.ln_q             merger RMSNorm                              (patches, Dv)
vision.merger.output           merged tokens, decoder width                (tokens, D)
decoder.embed_tokens           token embeddings (before image insertion)   (batch, seq, D)
decoder.inputs_embeds          decoder input, image tokens inserted        (batch, seq, D)
decoder.position_ids           M-RoPE ids (time, height, width)            (3, batch, seq)
decoder.rotary.cos / .sin      M-RoPE cos/sin                              (batch, seq, Dh)
decoder.layers.{i}.input       residual stream entering layer i            (batch, seq, D)
decoder.layers.{i}.input_layernorm                                         (batch, seq, D)
decoder.layers.{i}.self_attn.q_proj / k_proj / v_proj / o_proj             (batch, seq, *)
decoder.layers.{i}.self_attn   attention output (after o_proj)             (batch, seq, D)
decoder.layers.{i}.post_attention_layernorm                                (batch, seq, D)
decoder.layers.{i}.mlp         SwiGLU MLP output                           (batch, seq, D)
decoder.layers.{i}.output      residual stream leaving layer i             (batch, seq, D)
decoder.norm                   final RMSNorm                               (batch, seq, D)
logits                         lm_head output                              (batch, seq, vocab)
=============================  ==========================================  ===================

Vision sites come in raster order (row by row over the image) unless the
window order is asked for; ``vision.blocks.*`` and ``vision.merger.*`` are
computed in window order, ``vision.pixels``, ``vision.patch_embed`` and the
rotary sites in processor order (see ``anatomy.capture.orders``).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass

from torch import nn

from anatomy.model import DECODER_CHILDREN, VISION_CHILDREN, head_path, join, locate, unwrap

# Orders a captured tensor can be in along its first axis.
PROCESSOR, WINDOW, MERGED_WINDOW, NONE = "processor", "window", "merged_window", "none"


@dataclass(frozen=True)
class Site:
    """One capture point.

    Attributes:
        name: the short name, or the module path when no short name exists.
        module: module path (as ``named_modules`` and ``print(model)`` show it).
        hook: ``"output"``, ``"input"`` (the ``hidden_states`` input) or ``"arg:INDEX:NAME"``.
        part: for outputs that are tuples, which element to keep (``None``: the whole value).
        order: order of the first axis: processor, window, merged_window or none.
    """

    name: str
    module: str
    hook: str = "output"
    part: int | None = None
    order: str = NONE


def _vision_sites(vision: str, depth: int) -> list[Site]:
    sites = [
        Site("vision.pixels", join(vision, "patch_embed"), "input", order=PROCESSOR),
        Site("vision.patch_embed", join(vision, "patch_embed"), order=PROCESSOR),
        Site("vision.position_ids", join(vision, "rotary_pos_emb"), "arg:1:position_ids", order=PROCESSOR),
        Site("vision.rotary.cos", join(vision, "rotary_pos_emb"), part=0, order=PROCESSOR),
        Site("vision.rotary.sin", join(vision, "rotary_pos_emb"), part=1, order=PROCESSOR),
    ]
    for i in range(depth):
        block = join(vision, f"blocks.{i}")
        sites += [Site(f"vision.blocks.{i}.input", block, "input", order=WINDOW)]
        sites += [
            Site(f"vision.blocks.{i}.{leaf}", join(block, leaf), order=WINDOW)
            for leaf in ("norm1", "attn.qkv", "attn", "norm2", "mlp")
        ]
        sites += [Site(f"vision.blocks.{i}.output", block, order=WINDOW)]
    merger = join(vision, "merger")
    return sites + [
        Site("vision.merger.input", merger, "input", order=WINDOW),
        Site("vision.merger.ln_q", join(merger, "ln_q"), order=WINDOW),
        Site("vision.merger.output", merger, order=MERGED_WINDOW),
    ]


_ATTENTION_LEAVES = ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")


def _decoder_sites(decoder: str, layers: int) -> list[Site]:
    sites = [
        Site("decoder.embed_tokens", join(decoder, "embed_tokens")),
        Site("decoder.inputs_embeds", join(decoder, "layers.0"), "input"),
        Site("decoder.position_ids", join(decoder, "rotary_emb"), "arg:1:position_ids"),
        Site("decoder.rotary.cos", join(decoder, "rotary_emb"), part=0),
        Site("decoder.rotary.sin", join(decoder, "rotary_emb"), part=1),
    ]
    for i in range(layers):
        layer = join(decoder, f"layers.{i}")
        sites += [Site(f"decoder.layers.{i}.input", layer, "input")]
        sites += [Site(f"decoder.layers.{i}.{leaf}", join(layer, leaf)) for leaf in _ATTENTION_LEAVES]
        sites += [Site(f"decoder.layers.{i}.self_attn", join(layer, "self_attn"), part=0)]
        sites += [Site(f"decoder.layers.{i}.{leaf}", join(layer, leaf))
                  for leaf in ("post_attention_layernorm", "mlp")]
        sites += [Site(f"decoder.layers.{i}.output", layer)]
    return sites + [Site("decoder.norm", join(decoder, "norm"))]


def site_table(model: nn.Module) -> dict[str, Site]:
    """Every short name of ``model``, in data-flow order: ``{name: Site}``."""
    model = unwrap(model)
    vision, decoder = locate(model, *VISION_CHILDREN), locate(model, *DECODER_CHILDREN)
    depth = len(model.get_submodule(vision).blocks)
    layers = len(model.get_submodule(decoder).layers)
    sites = _vision_sites(vision, depth) + _decoder_sites(decoder, layers)
    sites.append(Site("logits", head_path(model)))
    return {site.name: site for site in sites}


def _module_site(path: str, vision: str) -> Site:
    """A site for a raw module path: its output, in the order its vision stage computes."""
    if path.startswith(join(vision, "blocks.")) or path.startswith(join(vision, "merger.ln_q")):
        return Site(path, path, order=WINDOW)
    if path == join(vision, "merger"):
        return Site(path, path, order=MERGED_WINDOW)
    if path.startswith(join(vision, "patch_embed")):
        return Site(path, path, order=PROCESSOR)
    return Site(path, path)


def resolve(model: nn.Module, names: str | list[str]) -> list[Site]:
    """Turn short names, module paths and wildcards into sites, in data-flow order.

    >>> [s.name for s in resolve(model, "vision.blocks.*.output")][:2]
    ['vision.blocks.0.output', 'vision.blocks.1.output']

    Raises ValueError naming the closest valid names for an unknown name, and
    the valid range for a layer index out of range.
    """
    names = [names] if isinstance(names, str) else list(names) if isinstance(names, (list, tuple)) else names
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"sites must be a site name or a non-empty list of names ('*': every site), got {names!r}")
    model = unwrap(model)
    table = site_table(model)
    modules = [path for path, _ in model.named_modules() if path]
    vision = locate(model, *VISION_CHILDREN)
    chosen: dict[str, Site] = {}
    for name in names:
        matched = _match(name, table, modules, vision)
        if not matched:
            raise ValueError(_unknown_message(name, table, modules))
        chosen.update((site.name, site) for site in matched)
    order = {name: i for i, name in enumerate(table)}
    return sorted(chosen.values(), key=lambda site: order.get(site.name, len(order)))


def _match(name: str, table: dict[str, Site], modules: list[str], vision: str) -> list[Site]:
    if name in table:
        return [table[name]]
    if name in modules:
        return [_module_site(name, vision)]
    if any(char in name for char in "*?["):
        found = [table[key] for key in fnmatch.filter(table, name)]
        return found or [_module_site(path, vision) for path in fnmatch.filter(modules, name)]
    return []


def _unknown_message(name: str, table: dict[str, Site], modules: list[str]) -> str:
    index = re.search(r"(blocks|layers)\.(\d+)", name)
    if index:
        stack = index.group(1)
        prefix = "vision.blocks" if stack == "blocks" else "decoder.layers"
        count = sum(1 for key in table if re.fullmatch(rf"{prefix}\.\d+\.output", key))
        if int(index.group(2)) >= count:
            return (f"site {name!r}: index {index.group(2)} is out of range; "
                    f"this model has {count} {stack} (0-{count - 1})")
    close = difflib.get_close_matches(name, list(table) + modules, n=5, cutoff=0.5)
    hint = f"closest valid names: {close}" if close else "see anatomy.capture.sites.site_table(model) for every name"
    return f"unknown site {name!r}; {hint}"
