"""Capture what flows through Qwen2.5-VL, without changing what it computes.

>>> specimen = anatomy.load("tiny")
>>> with capture(specimen, ["vision.patch_embed", "decoder.layers.*.output"]) as cache:
...     specimen.model(**encode(specimen, demo_image()))
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

import torch
from torch import nn

from anatomy.capture.cache import ActivationCache, Record
from anatomy.capture.sites import NONE, Site, resolve
from anatomy.model import unwrap, vision_tower


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
    model = unwrap(model)
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

    return [vision_tower(model).register_forward_pre_hook(remember_grid, with_kwargs=True)]


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


def run(model, prompt, sites: str | list[str] = "*", **options) -> ActivationCache:
    """One forward pass of ``model`` over ``prompt`` (``encode``'s result) under ``capture``; the cache.

    ``options`` are those of ``capture`` (``device``, ``dtype``, ``order``, ``copy``). Runs without
    gradients; ``run(specimen, prompt, sites)`` is ``with capture(...) as cache: specimen.model(**prompt)``.
    """
    with torch.no_grad(), capture(model, sites, **options) as cache:
        unwrap(model)(**prompt)
    return cache
