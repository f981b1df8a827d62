"""What an intervention changes: edit specs, the prompt layout they select in, and recorded sources.

An ``Edit`` names a capture site (``anatomy.capture.sites``) and what to write there:

>>> zero("vision.merger.output", cells=[(1, 2)])                 # one image cell's merged token
>>> zero("decoder.layers.1.self_attn", heads=[3])                # head 3's output, before o_proj
>>> patch("decoder.layers.0.input", clean, cells=[(0, 0)])       # clean -> corrupted, one cell
>>> mean("vision.blocks.2.output", reference, cells=[(3, 3)])    # mean over a reference set
>>> knock_out(layers=[1], queries=[-1], keys="image")             # the last token may not see the image

Selections (all optional, combined with "and" across kinds, "or" within ``cells`` and ``positions``):
``cells`` are (row, col) of the merged-token grid (one decoder image token, 2x2 patches),
``patches`` (row, col) of the patch grid (vision patch sites only), ``positions`` token
positions (decoder sites, negative counts from the end), ``heads`` attention heads, ``rows``
the batch rows (at vision sites: the images, one per row in a batch of one-picture prompts).
Nothing selected means the whole site.

A ``Recording`` is a run captured for patching: its tensors in the model's own order and the
``Layout`` of its prompt, so a patch into a prompt of another layout fails before the model runs.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from anatomy.capture import capture
from anatomy.model import unwrap

Cell = tuple[int, int]


@dataclass(frozen=True)
class Edit:
    """Write zeros, a reference mean or a recorded value into ``site`` where selected."""

    site: str
    kind: str
    source: Recording | None = None
    cells: tuple[Cell, ...] | None = None
    patches: tuple[Cell, ...] | None = None
    positions: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    rows: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Knockout:
    """Forbid ``queries`` from attending to ``keys`` in decoder ``layers`` (selected ``rows`` only)."""

    layers: tuple[int, ...]
    queries: tuple[int, ...] = (-1,)
    keys: str | tuple[int, ...] = "image"
    cells: tuple[Cell, ...] | None = None
    rows: tuple[int, ...] | None = None


def _ints(values, name: str) -> tuple[int, ...] | None:
    """``None``, an int or ints -> a tuple of ints; anything else is refused, naming ``name``."""
    if values is None:
        return None
    values = (values,) if isinstance(values, int) else tuple(values)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name}={values!r}: expected ints")
    return values


def _pairs(values, name: str) -> tuple[Cell, ...] | None:
    """``None`` or (row, col) pairs -> a tuple of int pairs."""
    if values is None:
        return None
    values = tuple(tuple(v) if isinstance(v, (tuple, list)) else v for v in values)
    if not all(isinstance(v, tuple) and len(v) == 2 and all(isinstance(i, int) for i in v) for v in values):
        raise ValueError(f"{name}={values!r}: expected (row, col) pairs of ints")
    return values


def _edit(site: str, kind: str, source, cells, patches, positions, heads, rows) -> Edit:
    if not isinstance(site, str):
        raise TypeError(f"site={site!r}: expected one site name (a string)")
    return Edit(
        site, kind, source, _pairs(cells, "cells"), _pairs(patches, "patches"),
        _ints(positions, "positions"), _ints(heads, "heads"), _ints(rows, "rows"),
    )


def zero(site: str, *, cells=None, patches=None, positions=None, heads=None, rows=None) -> Edit:
    """Zero-ablate the selected part of ``site``."""
    return _edit(site, "zero", None, cells, patches, positions, heads, rows)


def mean(site: str, reference: Recording, *, cells=None, patches=None, positions=None, heads=None, rows=None) -> Edit:
    """Replace the selected part of ``site`` by its mean over the rows of ``reference`` (same prompt layout)."""
    return _edit(site, "mean", _recording(reference), cells, patches, positions, heads, rows)


def patch(site: str, source: Recording, *, cells=None, patches=None, positions=None, heads=None, rows=None) -> Edit:
    """Replace the selected part of ``site`` by the value recorded in ``source`` (a prompt of the same layout).

    Resample ablation is a patch whose source is another, random input.
    """
    return _edit(site, "patch", _recording(source), cells, patches, positions, heads, rows)


def knock_out(layers, *, queries=(-1,), keys="image", cells=None, rows=None) -> Knockout:
    """Forbid attention from ``queries`` to ``keys`` in ``layers``.

    ``keys``: ``"image"`` (every image token, or only ``cells`` of it) or token positions.
    """
    if not (keys == "image" or not isinstance(keys, str)):
        raise ValueError(f"keys={keys!r}: expected 'image' or a list of token positions")
    keys = keys if keys == "image" else _ints(keys, "keys")
    if cells is not None and keys != "image":
        raise ValueError(f"cells={cells!r} select image keys: pass keys='image' with them, not keys={keys!r}")
    layers, queries = _ints(layers, "layers"), _ints(queries, "queries")
    return Knockout(layers, queries, keys, _pairs(cells, "cells"), _ints(rows, "rows"))


def _recording(source) -> Recording:
    if not isinstance(source, Recording):
        raise TypeError(
            f"expected a Recording (anatomy.causal.record(model, batch, sites)), got {type(source).__name__}"
        )
    return source


@dataclass(frozen=True)
class Layout:
    """Where the tokens of a prompt are: ``input_ids`` ``(B, L)`` and ``image_grid_thw`` ``(images, 3)`` or None."""

    input_ids: torch.Tensor
    image_grid_thw: torch.Tensor | None

    @classmethod
    def of(cls, batch: dict) -> Layout:
        grid = batch.get("image_grid_thw")
        return cls(batch["input_ids"].detach().cpu(), None if grid is None else grid.detach().cpu())

    def same_as(self, other: Layout, image_token_id: int) -> bool:
        """Same shape, same pictures' grids, image tokens at the same positions."""
        grids = (self.image_grid_thw is None) == (other.image_grid_thw is None) and (
            self.image_grid_thw is None or torch.equal(self.image_grid_thw, other.image_grid_thw)
        )
        shape = self.input_ids.shape == other.input_ids.shape
        return shape and grids and torch.equal(self.input_ids == image_token_id, other.input_ids == image_token_id)

    def describe(self) -> str:
        grid = None if self.image_grid_thw is None else self.image_grid_thw.tolist()
        return f"input_ids {tuple(self.input_ids.shape)}, image_grid_thw {grid}"


class Recording:
    """Activations of one run, kept for patching: ``recording[site]`` in the model's order (see ``record``)."""

    def __init__(self, tensors: dict[str, torch.Tensor], layout: Layout, model):
        self.tensors, self.layout, self._model = tensors, layout, weakref.ref(model)
        self.model_name = type(model).__name__

    def __getitem__(self, site: str) -> torch.Tensor:
        if site not in self.tensors:
            raise KeyError(f"site {site!r} was not recorded; recorded: {sorted(self.tensors)}")
        return self.tensors[site]

    def recorded_on(self, model) -> bool:
        return self._model() is model

    def take(self, rows) -> Recording:
        """The recording of the rows ``rows`` (repeats allowed), for a batch built with ``batches.take``.

        Vision tensors are split into equal per-picture chunks: one picture per row.
        """
        rows = torch.as_tensor(list(rows), dtype=torch.long)
        images = len(self.layout.image_grid_thw)
        tensors = {}
        for name, tensor in self.tensors.items():
            if name.startswith("vision."):
                per_image = tensor.reshape(images, -1, *tensor.shape[1:])  # (images, N, ...)
                tensors[name] = per_image[rows.to(tensor.device)].reshape(-1, *tensor.shape[1:])
            else:
                tensors[name] = tensor[rows.to(tensor.device)]
        layout = Layout(self.layout.input_ids[rows], self.layout.image_grid_thw[rows])
        return Recording(tensors, layout, self._model())

    def __repr__(self) -> str:
        return f"Recording({len(self.tensors)} sites, {self.layout.describe()})"


def record(model, batch: dict, sites) -> Recording:
    """Run ``model`` on ``batch`` once and keep ``sites`` (names or wildcards) for patching."""
    bare = unwrap(model)
    with torch.no_grad(), capture(bare, sites, device=None, order="model") as cache:
        bare(**batch)
    return Recording({name: cache[name] for name in cache}, Layout.of(batch), bare)
