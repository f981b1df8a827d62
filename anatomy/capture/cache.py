"""The activation cache: captured tensors by site name, in the order a person reads them.

Vision sites are computed in window or processor order; the cache hands them
back in raster order (row by row over the image) unless asked otherwise, using
the permutations of ``anatomy.capture.orders``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anatomy.capture import orders
from anatomy.capture.sites import MERGED_WINDOW, NONE, PROCESSOR, WINDOW, Site

ORDERS = ("raster", "window", "model")


@dataclass
class Record:
    """One captured tensor and the vision call it belongs to (``None`` for decoder sites)."""

    tensor: torch.Tensor
    vision_call: int | None


class ActivationCache:
    """Captured tensors by site name; see ``anatomy.capture.sites`` for every site and its shape.

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
                + (" (a prompt without an image or video never calls the vision tower)"
                   if name.startswith("vision") else "")
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
    if order == "window":  # only processor-order sites get here: processor -> window
        return orders.processor_to_window(grid_thw, vision_config)
    return to_raster(kind, grid_thw, vision_config)


def to_raster(kind: str, grid_thw: torch.Tensor, vision_config) -> torch.Tensor:
    """``perm`` with ``raster = computed[perm]`` for a vision site computed in order ``kind`` (``Site.order``)."""
    if kind == PROCESSOR:
        return orders.processor_to_raster(grid_thw, vision_config.spatial_merge_size)
    if kind == WINDOW:
        return orders.window_to_raster(grid_thw, vision_config)
    assert kind == MERGED_WINDOW, kind
    return orders.merged_window_to_raster(grid_thw, vision_config)


def _checked_order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"order={order!r}; expected one of {ORDERS}")
    return order
