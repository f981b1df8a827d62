"""The vision tower's 2D rotary embedding: every patch is rotated by its row and its column.

Each head has ``head_dim`` dimensions (80 in the released models: 1280 / 16).
Rotary pairs dimension ``j`` with ``j + head_dim/2``, so there are
``head_dim/2`` rotation angles per patch; the first quarter of the head turns
with the patch's row, the second quarter with its column, at frequencies
``theta ** (-2i / (head_dim/2))`` for ``i < head_dim/4`` (theta = 10000)::

    angle[:, :hd/4] = row * inv_freq      angle[:, hd/4:hd/2] = col * inv_freq
    cos = cat(cos(angle), cos(angle))     # (patches, head_dim)

>>> from anatomy.model import shipped_config
>>> config = shipped_config("7B").vision_config                # head_dim 1280 / 16 = 80
>>> len(inverse_frequencies(config)), axis_of_dimension(config)[18:22]
(20, ['row', 'row', 'col', 'col'])
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure


def inverse_frequencies(vision_config) -> torch.Tensor:
    """The ``head_dim/4`` rotation frequencies shared by rows and columns: (head_dim/4,)."""
    head_dim = vision_config.hidden_size // vision_config.num_heads
    half = head_dim // 2  # rotation angles per patch; rows take the first half of them, columns the second
    theta = vision_config.rope_parameters["rope_theta"]
    return 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float) / half)


def rotation_angles(position_ids: torch.Tensor, vision_config) -> torch.Tensor:
    """Angles of every patch from its (row, col): (patches, 2) -> (patches, head_dim/2)."""
    if position_ids.ndim != 2 or position_ids.shape[1] != 2:
        raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected (patches, 2) rows and columns")
    frequencies = inverse_frequencies(vision_config)
    return torch.cat([position_ids[:, :1] * frequencies, position_ids[:, 1:] * frequencies], dim=-1)


def axis_of_dimension(vision_config) -> list[str]:
    """``"row"`` or ``"col"`` for each of the head_dim dimensions of cos/sin."""
    quarter = len(inverse_frequencies(vision_config))
    return (["row"] * quarter + ["col"] * quarter) * 2


def rotary_figure(cos: torch.Tensor, grid_thw, vision_config) -> Figure:
    """Captured cos on the patch grid for the two fastest row and column frequencies.

    ``cos`` is the ``vision.rotary.cos`` site in raster order, (patches, head_dim), one image.
    """
    _, rows, cols = (int(v) for v in torch.as_tensor(grid_thw).reshape(-1))
    quarter = len(inverse_frequencies(vision_config))
    dims = {"row, i=0": 0, "row, i=1": 1, "column, i=0": quarter, "column, i=1": quarter + 1}
    figure = Figure(figsize=(12, 3.4), layout="constrained")
    for axis, (name, dim) in zip(figure.subplots(1, 4), dims.items()):
        shown = axis.imshow(cos[: rows * cols, dim].reshape(rows, cols).numpy(), cmap="RdBu", vmin=-1, vmax=1)
        axis.set(title=f"cos, dim {dim} ({name})", xlabel="patch column", ylabel="patch row")
    figure.colorbar(shown, ax=figure.axes, shrink=0.8)
    return figure


def frequency_figure(vision_config) -> Figure:
    """Wavelength in patches of every rotary frequency (the same list for rows and columns)."""
    wavelengths = (2 * np.pi / inverse_frequencies(vision_config)).numpy()
    figure = Figure(figsize=(6, 3), layout="constrained")
    axis = figure.subplots()
    axis.semilogy(np.arange(len(wavelengths)), wavelengths, marker="o")
    axis.set(title="rotary wavelength per frequency (rows and columns alike)", xlabel="frequency index i",
             ylabel="wavelength (patches)")
    axis.grid(alpha=0.3)
    return figure
