"""``intervene``: edit activations at capture sites while the model runs, beside ``capture``.

>>> clean = record(spec, clean_batch, "decoder.layers.*.input")
>>> with intervene(spec, [patch("decoder.layers.1.input", clean, cells=[(2, 1)])]):
...     logits = spec.model(**corrupted_batch).logits

Hooks exist only inside the ``with`` block and are removed on every exit, exceptions included.
Every edit is checked twice before anything is computed: when the block opens (site names,
head and layer indices, that a source was recorded on this model and holds the site), and when
the model is called, before its first module runs (cells inside the image grid, positions inside
the prompt, a source recorded on a prompt of the same layout). Either failure is one
``ValueError`` naming the value and what was expected.

With ``generate``, edits act on the prefill pass only (the forward pass over the whole prompt,
the only one that runs the vision tower): positions and cells refer to the prompt, whose edited
keys and values the KV cache then carries through every generated token; knockouts likewise
constrain the prompt's queries. A forward pass over a prompt (any call without a filled KV cache)
is a prefill.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from anatomy.capture.sites import NONE, Site, resolve
from anatomy.causal import select
from anatomy.causal.attention_mask import checked, forbid, mask_hook
from anatomy.causal.edits import Edit, Knockout, Layout
from anatomy.model import decoder_layers, unwrap, vision_tower

HEAD_SITES = {"self_attn": "o_proj", "attn": "proj"}  # site leaf -> the projection whose input holds the heads


@dataclass
class _Planned:
    """One edit bound to one resolved site; ``mask`` is filled for each prefill call."""

    edit: Edit
    site: Site
    module: str  # where the hook goes
    heads: int = 0  # number of heads of the projection input, for head edits
    mask: torch.Tensor | None = None


class _Call:
    """The prompt of the current forward pass: its layout, its image grid, and whether decoder edits act."""

    layout: Layout | None = None
    grid: torch.Tensor | None = None
    active: bool = False
    forbid: dict[int, torch.Tensor] = field(default_factory=dict)  # decoder layer -> its knockouts' (B, L, L)


@contextlib.contextmanager
def intervene(model, edits):
    """Apply ``edits`` (``Edit`` and ``Knockout`` items, see ``anatomy.causal.edits``) inside the block."""
    bare = unwrap(model)
    edits = [edits] if isinstance(edits, (Edit, Knockout)) else list(edits)
    planned = [p for edit in edits if isinstance(edit, Edit) for p in _plan(bare, edit)]
    knockouts = [checked(bare, k) for k in edits if isinstance(k, Knockout)]
    unknown = [e for e in edits if not isinstance(e, (Edit, Knockout))]
    if unknown:
        raise TypeError(f"expected Edit or Knockout items (anatomy.causal.zero, patch, ...), got {unknown[0]!r}")
    call = _Call()
    handles = []
    try:
        handles.append(bare.register_forward_pre_hook(_on_call(bare, call, planned, knockouts), with_kwargs=True))
        vision = vision_tower(bare)
        handles.append(vision.register_forward_pre_hook(_on_vision(bare, call, planned), with_kwargs=True))
        for path, group in _by_module(planned).items():
            handles.append(_hook(bare.get_submodule(path), group, call))
        layers = decoder_layers(bare)
        for layer in sorted({layer for knock in knockouts for layer in knock.layers}):
            handles.append(layers[layer].self_attn.register_forward_pre_hook(mask_hook(call, layer), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _plan(model: nn.Module, edit: Edit) -> list[_Planned]:
    """Resolve ``edit.site`` (wildcards give one planned edit per site) and check it against ``model``."""
    planned = []
    for site in resolve(model, edit.site):
        if site.hook.startswith("arg:"):
            raise ValueError(f"site {site.name!r} is an argument (ids), not an activation; it cannot be edited")
        vision = site.order != NONE
        if vision and edit.positions is not None:
            raise ValueError(f"positions= select decoder tokens; site {site.name!r} is in the vision tower: use cells=")
        if not vision and edit.patches is not None:
            raise ValueError(f"patches= select vision patches; site {site.name!r} is in the decoder: use cells=")
        if edit.source is not None:
            _check_source(model, edit, site)
        module, heads = (site.module, 0) if edit.heads is None else _head_module(model, edit, site)
        planned.append(_Planned(edit, site, module, heads))
    return planned


def _check_source(model: nn.Module, edit: Edit, site: Site) -> None:
    if not edit.source.recorded_on(model):
        raise ValueError(f"the {edit.kind} source of {site.name!r} was recorded on another model "
                         f"({edit.source.model_name}); record it on this one")
    if site.name not in edit.source.tensors:
        raise ValueError(f"the {edit.kind} source has no {site.name!r}; it holds {sorted(edit.source.tensors)[:6]}...")


def _head_module(model: nn.Module, edit: Edit, site: Site) -> tuple[str, int]:
    leaf = site.name.rsplit(".", 1)[-1]
    if leaf not in HEAD_SITES or site.module.rsplit(".", 1)[-1] != leaf:
        raise ValueError(f"heads= works on attention sites ('decoder.layers.i.self_attn', 'vision.blocks.i.attn'), "
                         f"not {site.name!r}")
    if edit.kind != "zero":
        raise ValueError(f"heads= works with zero ablation; got a {edit.kind!r} edit of {site.name!r}")
    attention = model.get_submodule(site.module)
    count = getattr(attention, "num_heads", None) or attention.config.num_attention_heads
    bad = [h for h in edit.heads if not 0 <= h < count]
    if bad:
        raise ValueError(f"head {bad[0]} is out of range: {site.name!r} has {count} heads (0-{count - 1})")
    return f"{site.module}.{HEAD_SITES[leaf]}", count


def _by_module(planned: list[_Planned]) -> dict[str, list[_Planned]]:
    groups: dict[str, list[_Planned]] = {}
    for p in planned:
        groups.setdefault(p.module, []).append(p)
    return groups


def _on_call(model: nn.Module, call: _Call, planned: list[_Planned], knockouts: list[Knockout]):
    """Root pre-hook: read the prompt's layout and build every mask, before any module runs."""

    def prepare(module, args, kwargs):
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        call.active = cache is None or cache.get_seq_length() == 0
        if not call.active:
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ValueError("intervene needs input_ids in the model call, to find the prompt's tokens and image cells")
        grid = kwargs.get("image_grid_thw")
        if grid is not None:
            _prepare_vision(model, call, planned, grid)
        call.layout = Layout.of({"input_ids": input_ids, "image_grid_thw": call.grid if grid is None else grid})
        for p in planned:
            if p.site.order == NONE:
                p.mask = _decoder_mask(p, call.layout, model.config)
        call.forbid = {}  # built once per prompt (and its cells and positions checked), read by every layer's hook
        for knock in knockouts:
            forbid(call.forbid, knock, call.layout, model.config, input_ids.device)

    return prepare


def _on_vision(model: nn.Module, call: _Call, planned: list[_Planned]):
    """Vision-tower pre-hook (``generate`` runs the tower before the first model call): the vision masks."""

    def prepare(module, args, kwargs):
        _prepare_vision(model, call, planned, kwargs.get("grid_thw", args[1] if len(args) > 1 else None))

    return prepare


def _prepare_vision(model: nn.Module, call: _Call, planned: list[_Planned], grid: torch.Tensor) -> None:
    grid = grid.detach().cpu()
    if call.grid is not None and torch.equal(call.grid, grid):
        return
    call.grid = grid
    for p in planned:
        if p.site.order != NONE:
            source = p.edit.source
            if p.edit.kind == "patch" and not torch.equal(source.layout.image_grid_thw, grid):
                raise ValueError(f"patch source for {p.site.name!r} was recorded on images of grid_thw "
                                 f"{source.layout.image_grid_thw.tolist()}; these images: {grid.tolist()}")
            p.mask = select.vision_mask(p.site, grid, model.config, p.edit.cells, p.edit.patches, p.edit.rows)


def _decoder_mask(p: _Planned, layout: Layout, config) -> torch.Tensor:
    edit = p.edit
    if edit.kind == "patch" and not edit.source.layout.same_as(layout, config.image_token_id):
        raise ValueError(f"patch source for {p.site.name!r} was recorded on a prompt of another layout "
                         f"({edit.source.layout.describe()}); this prompt: {layout.describe()}")
    return select.decoder_mask(layout, config, edit.cells, edit.positions, edit.rows)


def _values(p: _Planned, current: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | float:
    """What the entries of ``current`` under ``mask`` become: zeros, the reference mean, or the recorded value."""
    if p.edit.kind == "zero":
        return 0.0
    source = p.edit.source[p.site.name].to(current.device, current.dtype)
    if p.edit.kind == "patch":
        return source[mask]
    if p.site.order == NONE:  # decoder (B_ref, L, ...): mean over the reference rows
        if source.shape[1:] != current.shape[1:]:
            raise ValueError(f"mean reference for {p.site.name!r} has shape {tuple(source.shape)}; "
                             f"this prompt's is {tuple(current.shape)}: record the reference on prompts of this length")
        return source.mean(0, keepdim=True).expand_as(current)[mask]
    images = len(p.edit.source.layout.image_grid_thw)  # vision (images * N, ...): mean over reference images
    per_image = source.reshape(images, -1, *source.shape[1:]).mean(0)
    repeats = current.shape[0] // per_image.shape[0]
    if repeats * per_image.shape[0] != current.shape[0]:
        raise ValueError(f"mean reference for {p.site.name!r}: {per_image.shape[0]} rows per image do not tile "
                         f"this prompt's {current.shape[0]}: record the reference on images of this size")
    return per_image.repeat(repeats, *[1] * (per_image.ndim - 1))[mask]


def _write(p: _Planned, out: torch.Tensor) -> None:
    """Write ``p``'s edit into ``out`` (a private copy) in place; heads edits split the last axis into heads."""
    mask = p.mask.to(out.device)
    if p.heads:
        out = out.view(*out.shape[:-1], p.heads, -1)  # (..., heads, head_dim), a view: writes reach ``out``
        chosen = torch.zeros(p.heads, dtype=torch.bool, device=out.device)
        chosen[list(p.edit.heads)] = True
        mask = mask[..., None] & chosen  # (..., heads)
    out[mask] = _values(p, out, mask)


def _hook(module: nn.Module, group: list[_Planned], call: _Call):
    """One hook on ``module`` for its planned edits: a pre-hook for inputs (and heads), else a forward hook."""
    on_input = group[0].site.hook == "input" or bool(group[0].heads)
    if any((p.site.hook == "input" or bool(p.heads)) != on_input for p in group):
        return _split_hooks(module, group, call)

    def edited(value):
        active = [p for p in group if p.mask.any()]
        if not active:
            return value
        value = value.clone()  # the model's own tensor may be used elsewhere (residual connections)
        for p in active:
            _write(p, value)
        return value

    vision = group[0].site.order != NONE  # the vision tower runs on prompts only: always edited

    def before(module, args, kwargs):
        if not (call.active or vision):
            return None
        if args:
            return (edited(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edited(kwargs["hidden_states"])}

    def after(module, args, output):
        if not (call.active or vision):
            return None
        if isinstance(output, torch.Tensor):
            return edited(output)
        part = group[0].site.part or 0
        return (*output[:part], edited(output[part]), *output[part + 1 :])

    if on_input:
        return module.register_forward_pre_hook(before, with_kwargs=True)
    return module.register_forward_hook(after)


class _Handles:
    """Several hook handles removed as one."""

    def __init__(self, handles):
        self.handles = handles

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _split_hooks(module: nn.Module, group: list[_Planned], call: _Call) -> _Handles:
    inputs = [p for p in group if p.site.hook == "input" or p.heads]
    outputs = [p for p in group if not (p.site.hook == "input" or p.heads)]
    return _Handles([_hook(module, inputs, call), _hook(module, outputs, call)])
