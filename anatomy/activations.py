"""Capture what flows through Qwen2.5-VL, without changing what it computes.

>>> spec = anatomy.load("tiny")
>>> with capture(spec, ["vision.patch_embed", "decoder.layers.*.output"]) as cache:
...     spec.model(**encode(spec, demo_image()))
>>> cache["vision.patch_embed"].shape      # raster order: row by row over the image
torch.Size([768, 64])

Hooks exist only inside the ``with`` block and are removed on every exit,
exceptions and KeyboardInterrupt included. Captured tensors are detached,
moved to ``device`` (default: the CPU, so a 7B on a GPU does not fill GPU
memory) and optionally cast to ``dtype``. A tensor that needs neither (a CPU
model) is kept by reference, as TransformerLens and nnsight do: Qwen2.5-VL
never modifies an activation in place after it is produced (tested), so the
reference holds the value; ``copy=True`` forces a copy of every tensor.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from anatomy import order as orders
from anatomy.sites import MERGED_WINDOW, NONE, PROCESSOR, WINDOW, Site, find_module, resolve

ORDERS = ("raster", "window", "model")


@dataclass
class Record:
    """One captured tensor and the vision call it belongs to (``None`` for decoder sites)."""

    tensor: torch.Tensor
    vision_call: int | None


class ActivationCache:
    """Captured tensors by site name; see ``anatomy.sites`` for every site and its shape.

    ``cache[name]`` is the tensor of a site captured once (one forward pass).
    During ``generate`` a decoder site is captured once per step: use
    ``cache.steps(name)``. Vision sites come in raster order unless asked
    otherwise: ``cache.get(name, order="window")`` gives the order the vision
    blocks compute in, ``order="model"`` whatever order the model used.
    """

    def __init__(self, sites: list[Site], vision_config, default_order: str = "raster"):
        self.sites = {site.name: site for site in sites}
        self.records: dict[str, list[Record]] = {site.name: [] for site in sites}
        self.grid_thw: list[torch.Tensor] = []  # one (images, 3) grid per vision-tower call
        self.vision_config = vision_config
        self.default_order = _checked_order(default_order)
        self._perms: dict[tuple[int, str, str], torch.Tensor] = {}

    def __contains__(self, name: str) -> bool:
        return bool(self.records.get(name))

    def __iter__(self):
        return (name for name, records in self.records.items() if records)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.get(name)

    def get(self, name: str, order: str | None = None, step: int | None = None) -> torch.Tensor:
        """The tensor of ``name``; ``step`` picks one forward pass when there were several."""
        records = self._records(name)
        if step is None and len(records) > 1:
            raise ValueError(
                f"site {name!r} was captured in {len(records)} forward passes (generate?); "
                f"use cache.steps({name!r}) or cache.get({name!r}, step=i)"
            )
        if step is not None and not -len(records) <= step < len(records):
            raise IndexError(f"step {step} out of range: site {name!r} has {len(records)} captured steps")
        return self._ordered(self.sites[name], records[step or 0], order or self.default_order)

    def steps(self, name: str, order: str | None = None) -> list[torch.Tensor]:
        """Every capture of ``name``, one per forward pass, in call order."""
        return [self._ordered(self.sites[name], r, order or self.default_order) for r in self._records(name)]

    def summary(self) -> str:
        """One line per captured site: name, shape, dtype, number of captures."""
        rows = [(name, self.records[name]) for name in self]
        width = max((len(name) for name, _ in rows), default=4)
        lines = [f"{'site':<{width}}  {'shape':<22} {'dtype':<15} captures"]
        for name, records in rows:
            tensor = records[0].tensor
            lines.append(f"{name:<{width}}  {str(tuple(tensor.shape)):<22} {str(tensor.dtype):<15} {len(records)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} sites captured of {len(self.sites)} hooked)"

    def _records(self, name: str) -> list[Record]:
        if name not in self.records:
            raise KeyError(f"site {name!r} was not hooked; hooked sites: {list(self.records)[:8]}...")
        if not self.records[name]:
            raise KeyError(
                f"site {name!r} was hooked but never ran"
                + (" (a prompt without an image or video never calls the vision tower)" if name.startswith("vision") else "")
            )
        return self.records[name]

    def _ordered(self, site: Site, record: Record, order: str) -> torch.Tensor:
        _checked_order(order)
        if site.order == NONE or order == "model" or record.vision_call is None:
            return record.tensor
        if order == "window" and site.order != PROCESSOR:
            return record.tensor
        perm = self._perm(record.vision_call, site.order, order)
        return record.tensor[perm.to(record.tensor.device)]

    def _perm(self, call: int, kind: str, order: str) -> torch.Tensor:
        key = (call, kind, order)
        if key not in self._perms:
            self._perms[key] = _permutation(self.grid_thw[call], self.vision_config, kind, order)
        return self._perms[key]


def _permutation(grid_thw: torch.Tensor, vision_config, kind: str, order: str) -> torch.Tensor:
    merge = vision_config.spatial_merge_size
    if order == "window":  # only processor-order sites get here: processor -> window
        unit = merge**2
        merged = orders.window_index(grid_thw, vision_config)
        return (merged[:, None] * unit + torch.arange(unit)).reshape(-1)
    if kind == PROCESSOR:
        return orders.processor_to_raster(grid_thw, merge)
    if kind == WINDOW:
        return orders.window_to_raster(grid_thw, vision_config)
    assert kind == MERGED_WINDOW, kind
    return orders.merged_window_to_raster(grid_thw, vision_config)


def _checked_order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"order={order!r}; expected one of {ORDERS}")
    return order


def bare_model(model) -> nn.Module:
    """The transformers model of a ``Specimen``, or the model itself; refuses anything but Qwen2.5-VL."""
    model = getattr(model, "model", model) if not isinstance(model, nn.Module) else model
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if not isinstance(model, nn.Module) or model_type != "qwen2_5_vl":
        raise TypeError(
            f"expected a Qwen2.5-VL model (model_type 'qwen2_5_vl') or a Specimen from anatomy.load, "
            f"got {type(model).__name__} with model_type {model_type!r}"
        )
    return model


@contextlib.contextmanager
def capture(
    model,
    sites: str | list[str] = "*",
    *,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype | None = None,
    order: str = "raster",
    copy: bool = False,
):
    """Hook ``sites`` of ``model`` for the duration of the block and yield the cache.

    Args:
        model: a ``Specimen`` or a bare ``Qwen2_5_VLForConditionalGeneration``.
        sites: short names, module paths from ``print(model)``, or wildcards
            (``"vision.blocks.*.output"``); ``"*"`` is every short name.
        device: where captured copies go (``None``: stay on the model's device).
        dtype: cast captured copies to this dtype (``None``: keep).
        order: default order of vision sites: ``"raster"``, ``"window"`` or ``"model"``.
        copy: copy tensors that already are on ``device`` in ``dtype`` (``False``: keep a
            detached reference, which costs no time).
    """
    model = bare_model(model)
    _check_runnable(model, dtype)
    chosen = resolve(model, sites)
    cache = ActivationCache(chosen, model.config.vision_config, order)
    handles = []
    try:
        handles += _hook_vision_calls(model, cache)
        for path, group in _by_module(chosen).items():
            handles += _hook_module(model.get_submodule(path), group, cache, device, dtype, copy)
        yield cache
    finally:
        for handle in handles:
            handle.remove()


def _check_runnable(model: nn.Module, dtype) -> None:
    """Refuse a skeleton (meta device: nothing runs, nothing to copy) and a dtype that would truncate."""
    if any(parameter.is_meta for parameter in model.parameters()):
        raise ValueError(
            "this model is a skeleton on the meta device (load('3B'/'7B'/...) has shapes, no weights): it cannot run, "
            "so there is nothing to capture; use load('toy'), load('tiny') or real weights"
        )
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dtype={dtype!r}; expected a floating torch dtype (torch.float32, torch.bfloat16...) or None")


def _by_module(sites: list[Site]) -> dict[str, list[Site]]:
    groups: dict[str, list[Site]] = {}
    for site in sites:
        groups.setdefault(site.module, []).append(site)
    return groups


def _hook_vision_calls(model: nn.Module, cache: ActivationCache) -> list:
    def remember_grid(module, args, kwargs):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        cache.grid_thw.append(grid.detach().cpu())

    vision = model.get_submodule(find_module(model, "patch_embed", "merger", "blocks"))
    return [vision.register_forward_pre_hook(remember_grid, with_kwargs=True)]


def _hook_module(module: nn.Module, sites: list[Site], cache: ActivationCache, device, dtype, copy: bool) -> list:
    inputs = [site for site in sites if site.hook != "output"]
    outputs = [site for site in sites if site.hook == "output"]

    def keep(site: Site, value) -> None:
        tensor = _first_tensor(value if site.part is None else value[site.part]).detach()
        tensor = tensor.to(device=device or tensor.device, dtype=dtype or tensor.dtype, copy=copy)
        vision_call = len(cache.grid_thw) - 1 if site.order != NONE else None
        cache.records[site.name].append(Record(tensor, vision_call))

    def on_input(module, args, kwargs):
        for site in inputs:
            keep(site, _argument(site.hook, args, kwargs))

    def on_output(module, args, kwargs, output):
        for site in outputs:
            keep(site, output)

    handles = [module.register_forward_pre_hook(on_input, with_kwargs=True)] if inputs else []
    return handles + ([module.register_forward_hook(on_output, with_kwargs=True)] if outputs else [])


def _argument(hook: str, args: tuple, kwargs: dict):
    """The input a site wants: ``"input"`` is ``hidden_states``, ``"arg:i:name"`` the i-th argument."""
    _, index, name = ("arg:0:hidden_states" if hook == "input" else hook).split(":")
    return args[int(index)] if len(args) > int(index) else kwargs[name]


def _first_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value
    for item in items:
        if isinstance(item, torch.Tensor):
            return item
    raise TypeError(f"captured value of type {type(value).__name__} holds no tensor")
