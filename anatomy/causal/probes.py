"""Linear probes on the user's own labelled prompts: what each depth makes linearly readable about the pictures.

>>> prompts = [encode(spec, photo, "Describe the picture.") for photo in photos]     # any sizes, one picture each
>>> found = probe(spec, prompts, ["cat", "dog", ...], control=untrained)           # one label per prompt
>>> found.accuracy["label"], found.control["label"], found.chance["label"]         # (sites,), (sites,), a number
>>> cells = probe(spec, prompts, {"sky": [sky_0, sky_1, ...]}, pool="cell")        # (rows, cols) labels per prompt

A probe is ridge regression onto one-hot classes, fitted in closed form on the features of the training
prompts and scored (argmax) on the held-out ones: ``test`` of the prompts, drawn with ``seed`` (``seed=None``
holds out the last ones, in the order given). Cells of one picture are never split between the two.
``chance`` is the held-out accuracy of always answering the training set's most common class. ``control``,
a model of the same architecture at its random initialisation, gets the same probes on the same prompts:
what random features already make readable from the pixels.

Features, per prompt (its one picture's grid read from ``image_grid_thw``; pictures of different sizes may be
mixed, each pooled on its own grid):

- ``pool="mean"``: the mean over the picture: of its patches at a vision site (``(Dv,)``), of its merged
  tokens at ``vision.merger.output``, of its image tokens at a decoder site (``(D,)``);
- ``pool="cell"``: one row per merged cell, raster order: a vision site gives the cell's 2x2 patches side by
  side, as the merger takes them (``(4 Dv,)``); the merger and decoder sites the cell's token (``(D,)``).
  Labels are then a ``(rows, cols)`` array per prompt; a cell labelled None is left out.

Prompts of one layout (``Layout.same_as``) run together, at most ``batch_size`` at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from anatomy.capture import capture
from anatomy.capture.sites import MERGED_WINDOW, NONE, resolve
from anatomy.causal.edits import Layout
from anatomy.kernels import fast_vision
from anatomy.model import decoder_layers, unwrap, vision_blocks

POOLS = ("mean", "cell")


def probe_sites(spec) -> list[str]:
    """Every vision block's output, the merger's output, every decoder layer's output: the default sites."""
    depth, layers = len(vision_blocks(spec)), len(decoder_layers(spec))
    return ([f"vision.blocks.{i}.output" for i in range(depth)] + ["vision.merger.output"]
            + [f"decoder.layers.{i}.output" for i in range(layers)])  # fmt: skip


def picture_grids(spec, prompts) -> list[tuple[int, int]]:
    """(rows, cols) of merged cells of each prompt's one picture; refuses anything else."""
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise TypeError(f"prompts={prompts!r:.80}; expected a non-empty list of Prompts (anatomy.encode)")
    merge, grids = spec.config.vision_config.spatial_merge_size, []
    for i, prompt in enumerate(prompts):
        grid = prompt.get("image_grid_thw") if isinstance(prompt, Mapping) else None
        if grid is None or len(grid) != 1 or int(grid[0, 0]) != 1:
            what = "no picture" if grid is None else f"image_grid_thw {grid.tolist()}"
            raise ValueError(f"prompt {i} has {what}; a probe reads one still picture per prompt "
                             f"(encode(spec, image, text))")  # fmt: skip
        grids.append((int(grid[0, 1]) // merge, int(grid[0, 2]) // merge))
    return grids


def _groups(spec, prompts, batch_size: int) -> list[list[int]]:
    """Prompt indices by layout, in order of first appearance, cut into batches of at most ``batch_size``."""
    image_id, groups = spec.config.image_token_id, []
    for i, prompt in enumerate(prompts):
        layout = Layout.of(prompt)
        same = [rows for first, rows in groups if first.same_as(layout, image_id)]
        if same:
            same[0].append(i)
        else:
            groups.append((layout, [i]))
    return [rows[s : s + batch_size] for _, rows in groups for s in range(0, len(rows), batch_size)]


def features(spec, prompts, sites: list[str], pool: str = "cell", batch_size: int = 16) -> dict[str, list]:
    """``site -> [per prompt: (cells, F) if pool == "cell" else (F,)]`` float32 on the CPU (module docstring)."""
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}; expected one of {POOLS}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive number of prompts per forward pass")
    grids, chosen = picture_grids(spec, prompts), resolve(spec, sites)
    merge, image_id = spec.config.vision_config.spatial_merge_size, spec.config.image_token_id
    found = {site.name: [None] * len(prompts) for site in chosen}
    model = unwrap(spec)
    for rows in _groups(spec, prompts, batch_size):
        batch = {k: torch.cat([prompts[r][k] for r in rows]).to(model.device) for k in prompts[rows[0]]}
        (cells_down, cells_across), image = grids[rows[0]], batch["input_ids"][0] == image_id  # (S,)
        with torch.no_grad(), fast_vision(model), capture(model, [s.name for s in chosen]) as cache:
            model(**batch, logits_to_keep=1, use_cache=False)
            for site in chosen:
                tensor = cache[site.name].float()
                if site.order == NONE:  # decoder side: (B, S, D) -> each row's image tokens, raster order
                    if tensor.ndim != 3 or tensor.shape[:2] != batch["input_ids"].shape:
                        raise ValueError(f"site {site.name!r} gives shape {tuple(tensor.shape)}; a probe reads "
                                         f"(batch, seq, D) at the image tokens, or a vision site")  # fmt: skip
                    cells = tensor[:, image]  # (B, cells, D)
                elif site.order == MERGED_WINDOW:
                    cells = tensor.reshape(len(rows), cells_down * cells_across, -1)  # (B, cells, D)
                else:  # patches, raster (B, 2 rows, 2 cols, Dv) -> each cell's 2x2 patches side by side, as merged
                    patches = tensor.reshape(len(rows), cells_down, merge, cells_across, merge, -1)
                    cells = patches.permute(0, 1, 3, 2, 4, 5).reshape(len(rows), cells_down * cells_across, -1)
                for k, r in enumerate(rows):
                    if pool == "cell":
                        found[site.name][r] = cells[k].cpu()  # (cells, F)
                    elif site.order in (NONE, MERGED_WINDOW):
                        found[site.name][r] = cells[k].mean(0).cpu()  # (D,)
                    else:
                        found[site.name][r] = cells[k].reshape(-1, tensor.shape[-1]).mean(0).cpu()  # (Dv,)
    return found


def ridge_accuracy(train_x, train_y, test_x, test_y, ridge: float = 1.0) -> float:
    """Fit one-hot targets by ridge regression in closed form; accuracy of the argmax on the test set.

    ``train_x`` ``(n, D)``, ``train_y`` ``(n,)`` class indices; features standardised with the train statistics,
    a bias column added (and regularised like the rest). With fewer rows than columns the dual form
    ``X^T (X X^T + ridge I)^-1 Y`` is solved, the same weights as the primal ``(X^T X + ridge I)^-1 X^T Y``.
    """
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    design = torch.cat([(train_x - mean) / std, torch.ones(len(train_x), 1)], 1).double()  # (n, D + 1)
    classes = int(train_y.max()) + 1  # a test class never seen in training is never predicted: counted wrong
    targets = torch.nn.functional.one_hot(torch.as_tensor(train_y), classes).double()  # (n, classes)
    n, width = design.shape
    if n < width:
        weights = design.T @ torch.linalg.solve(design @ design.T + ridge * torch.eye(n, dtype=torch.float64), targets)
    else:
        gram = design.T @ design + ridge * torch.eye(width, dtype=torch.float64)
        weights = torch.linalg.solve(gram, design.T @ targets)  # (D + 1, classes)
    test = torch.cat([(test_x - mean) / std, torch.ones(len(test_x), 1)], 1).double()
    return float(((test @ weights).argmax(1).numpy() == test_y).mean())


@dataclass
class Probes:
    """Held-out probe accuracy per label set: ``accuracy[name]`` (trained) and ``control[name]`` (random init, None
    without a control), each ``(sites,)``; ``chance[name]``: always the training set's most common class.

    ``classes[name]``: the classes, in the order of their indices; ``train``, ``test``: the prompts' indices;
    ``grids``: (rows, cols) of cells per prompt.
    """

    sites: list[str]
    pool: str
    accuracy: dict[str, np.ndarray]
    control: dict[str, np.ndarray] | None
    chance: dict[str, float]
    classes: dict[str, tuple]
    train: np.ndarray
    test: np.ndarray
    grids: list[tuple[int, int]]


def _label_sets(labels, grids: list[tuple[int, int]], pool: str) -> dict[str, list[np.ndarray]]:
    """``name -> [per prompt: (cells,) object array]`` in raster order; None marks an unlabelled cell."""
    sets = dict(labels) if isinstance(labels, Mapping) else {"label": labels}
    checked = {}
    for name, given in sets.items():
        if isinstance(given, (str, bytes)) or not hasattr(given, "__len__") or len(given) != len(grids):
            count = len(given) if hasattr(given, "__len__") and not isinstance(given, str) else repr(given)
            raise ValueError(f"labels {name!r} has {count} entries for {len(grids)} prompts; expected one "
                             f"{'label' if pool == 'mean' else '(rows, cols) array of labels'} per prompt")  # fmt: skip
        per_prompt = []
        for i, (entry, grid) in enumerate(zip(given, grids)):
            if pool == "mean":
                per_prompt.append(np.array([entry], dtype=object))
                continue
            cells = np.empty(grid, dtype=object)
            entry = np.asarray(entry, dtype=object)
            if entry.shape != grid:
                raise ValueError(f"labels {name!r}[{i}] has shape {entry.shape}; prompt {i}'s picture is "
                                 f"{grid[0]} x {grid[1]} cells (rows x cols): expected one label per cell")  # fmt: skip
            cells[...] = entry
            per_prompt.append(cells.reshape(-1))
        present = {x for cells in per_prompt for x in cells if x is not None}
        if len(present) < 2:
            raise ValueError(f"labels {name!r} have {len(present)} class(es) {sorted(present, key=str)}; a probe "
                             f"needs at least two")  # fmt: skip
        checked[name] = per_prompt
    return checked


def _split(count: int, test: float, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < test < 1:
        raise ValueError(f"test={test!r}; expected the held-out share of the prompts, between 0 and 1")
    train = int(count * (1 - test) + 1e-9)
    if not 0 < train < count:
        raise ValueError(f"{count} prompts with test={test} leave {train} to train and {count - train} to test; "
                         f"expected at least one of each")  # fmt: skip
    order = np.arange(count) if seed is None else np.random.default_rng(seed).permutation(count)
    return np.sort(order[:train]), np.sort(order[train:])


def _scores(found: dict[str, list], sets: dict, classes: dict, train, test, ridge: float) -> dict[str, np.ndarray]:
    scores = {name: np.zeros(len(found)) for name in sets}
    for name, per_prompt in sets.items():
        index = {c: k for k, c in enumerate(classes[name])}
        y = [np.array([index.get(x, -1) for x in cells]) for cells in per_prompt]  # -1: no label
        train_y, test_y = np.concatenate([y[i] for i in train]), np.concatenate([y[i] for i in test])
        for j, per_site in enumerate(found.values()):
            x = [per_site[i].reshape(len(y[i]), -1) for i in range(len(y))]  # (items, F) per prompt
            train_x, test_x = torch.cat([x[i] for i in train]), torch.cat([x[i] for i in test])
            scores[name][j] = ridge_accuracy(train_x[torch.from_numpy(train_y >= 0)], train_y[train_y >= 0],
                                             test_x[torch.from_numpy(test_y >= 0)], test_y[test_y >= 0], ridge)
    return scores


def _shape(spec) -> tuple[int, int, int]:
    vision = spec.config.vision_config
    return spec.config.image_token_id, vision.spatial_merge_size, vision.patch_size


def probe(spec, prompts, labels, sites=None, pool: str = "mean", control=None, test: float = 0.25,
          seed: int | None = 0, ridge: float = 1.0, batch_size: int = 16) -> Probes:  # fmt: skip
    """Probes at ``sites`` (default ``probe_sites``) of ``spec``, and of ``control`` if given (module docstring).

    ``labels``: one label per prompt (``pool="mean"``) or a ``(rows, cols)`` array per prompt (``pool="cell"``);
    or a dict ``{name: such labels}`` to probe several properties from one run of each model.
    """
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}; expected one of {POOLS}")
    if not ridge > 0:
        raise ValueError(f"ridge={ridge!r}; expected a positive penalty")
    grids = picture_grids(spec, prompts)
    sets = _label_sets(labels, grids, pool)
    train, held = _split(len(prompts), test, seed)
    names = [s.name for s in resolve(spec, probe_sites(spec) if sites is None else sites)]  # unknown: refused here
    classes, chance = {}, {}
    for name, per_prompt in sets.items():
        seen = [x for i in train for x in per_prompt[i] if x is not None]
        scored = [x for i in held for x in per_prompt[i] if x is not None]
        if len(set(seen)) < 2:
            raise ValueError(f"labels {name!r}: the {len(train)} training prompts hold one class "
                             f"{sorted(set(seen), key=str)}; a probe needs at least two (another seed, or more "
                             f"prompts)")  # fmt: skip
        classes[name] = tuple(dict.fromkeys(seen + scored))  # the training classes first: indices 0..k-1
        majority = max(dict.fromkeys(seen), key=seen.count)
        chance[name] = float(np.mean([x == majority for x in scored])) if scored else float("nan")
    if control is not None and _shape(control) != _shape(spec):
        raise ValueError(f"control is {_shape(control)} (image token, merge, patch size); the prompts were encoded "
                         f"for {_shape(spec)}: expected the same architecture at its random initialisation")  # fmt: skip
    scores = _scores(features(spec, prompts, names, pool, batch_size), sets, classes, train, held, ridge)
    controls = None if control is None else _scores(features(control, prompts, names, pool, batch_size), sets,
                                                    classes, train, held, ridge)  # fmt: skip
    return Probes(names, pool, scores, controls, chance, classes, train, held, grids)


def probe_figure(result: Probes) -> Figure:
    """Held-out accuracy by depth, one panel per label set: trained (solid), random init (dashed), chance."""
    figure = Figure(figsize=(3.7 * len(result.accuracy), 3.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(result.accuracy), sharey=True))
    x = np.arange(len(result.sites))
    ticks = [s.replace("decoder.layers.", "dec ").replace("vision.blocks.", "vis ").replace(".output", "")
             .replace("vision.merger", "merger") for s in result.sites]  # fmt: skip
    for axis, name in zip(axes, result.accuracy):
        axis.plot(x, result.accuracy[name], "-o", label="trained")
        if result.control is not None:
            axis.plot(x, result.control[name], "--s", label="random init")
        axis.axhline(result.chance[name], color="grey", lw=0.8, label="majority class")
        axis.set_xticks(x, ticks, rotation=60, fontsize=7)
        axis.set_title(name, fontsize=9)
    axes[0].set_ylabel(f"held-out probe accuracy ({result.pool} pooled)" if result.pool == "mean"
                       else "held-out probe accuracy (per cell)")  # fmt: skip
    axes[0].legend(fontsize=7)
    return figure
