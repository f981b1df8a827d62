"""``load_toy``: the shipped toy in about a second; ``ensure_trained``: retrain one, safely.

``load_toy()`` reads the weights shipped in the package (``weights.SHIPPED``):
the same model on every machine, never trained here. ``load_toy(recipe=...)``
reads a toy the user retrained with ``python -m anatomy toy train`` from the
verified cache, and never trains either: without one it stops with one error
that names the command. ``ensure_trained`` is what that command runs.

>>> specimen = load_toy()                   # the shipped toy, ~1 s
>>> specimen.kind
'toy'
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch

from anatomy.model import ATTENTION_KERNELS, Specimen
from anatomy.processor import offline_processor
from anatomy.toy.cache import (
    CacheError,
    cache_dir,
    cache_root,
    locked,
    read_manifest,
    set_aside,
    sweep,
    verify,
    writable,
)
from anatomy.toy.training import Log, Recipe, initial_model, toy_config, train
from anatomy.toy.weights import SHIPPED, read_model, write_model


def load_toy(
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    recipe: Recipe | None = None,
) -> Specimen:
    """The shipped toy (``recipe=None``), or the one retrained with ``recipe``, from its verified directory.

    Nothing is trained here. A damaged shipped directory is one ``CacheError`` (restore it from the
    repository); a retrained one that is damaged is reported, set aside, and the error says how to retrain.
    """
    if attn_implementation not in ATTENTION_KERNELS:
        raise ValueError(f"attn_implementation={attn_implementation!r}; expected one of {ATTENTION_KERNELS}")
    if recipe is not None and not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be an anatomy.toy.Recipe or None, got {type(recipe).__name__}")
    directory = SHIPPED if recipe is None else _retrained(recipe)
    try:
        model, _ = read_model(directory, attn_implementation)
    except CacheError as error:
        if recipe is None:
            raise CacheError(f"{error}; restore the shipped toy with `git checkout -- anatomy/toy/shipped`") from None
        raise CacheError(f"{error}; {_set_aside(directory)}; retrain it: {_command(recipe)}") from None
    return Specimen(model.to(dtype=dtype, device=device or "cpu"), "toy", "toy")


def untrained_toy(recipe: Recipe = Recipe()) -> Specimen:
    """The toy model as ``recipe`` starts it, before any training: the random baseline of the evaluation."""
    return Specimen(initial_model(toy_config(), recipe.seed).eval(), "toy (untrained)", "untrained")


def ensure_trained(recipe: Recipe = Recipe(), retrain: bool = False, progress: bool = True) -> Path:
    """The verified cache directory of ``recipe``, training the model first if there is none (or ``retrain``).

    One trainer per recipe at a time: a second call waits for the first and, if it finished meanwhile,
    uses its model instead of training again. Interrupted (Ctrl-C, SIGTERM raised as ``KeyboardInterrupt``),
    the previous model stays in place.
    """
    directory = cache_dir(recipe)
    writable(cache_root())
    before = _stamp(directory)
    with locked(directory, waiting=f"anatomy toy: waiting for another process training this toy ({directory})"):
        sweep(directory)
        if directory.exists():
            try:
                verify(directory)
                if not retrain or _stamp(directory) != before:  # nothing asked, or someone retrained it while we waited
                    return directory
            except CacheError as error:
                _warn(f"{error}; {_set_aside(directory)}; retraining")
        writable(cache_root())
        start = time.perf_counter()
        log = Log()
        model = train(toy_config(), recipe, offline_processor(), progress=progress, log=log)
        write_model(model, directory, recipe, log, train_seconds=round(time.perf_counter() - start, 1))
    if log.passed_at is None:
        _warn(f"the toy did not pass its validation check in {recipe.max_steps} steps (last check: "
              f"{log.curve[-1]['accuracy'] if log.curve else 'none'}); it is saved, but may answer badly")  # fmt: skip
    return directory


def _retrained(recipe: Recipe) -> Path:
    directory = cache_dir(recipe)
    if not directory.exists():
        raise CacheError(f"no toy retrained with seed {recipe.seed} in {directory}; load('toy') without a seed "
                         f"is the shipped toy; to train this one: {_command(recipe)}")  # fmt: skip
    return directory


def _command(recipe: Recipe) -> str:
    if recipe == Recipe(seed=recipe.seed):
        return f"`python -m anatomy toy train --seed {recipe.seed}` (minutes on a CPU)"
    return f"anatomy.toy.ensure_trained({recipe})"


def _set_aside(directory: Path) -> str:
    try:
        return f"set aside as {set_aside(directory)}"
    except OSError as error:
        return f"could not be set aside ({error.strerror or error})"


def _stamp(directory: Path) -> dict | None:
    """What identifies the model now in ``directory``: its manifest (``None`` if unreadable)."""
    try:
        return read_manifest(directory)
    except (CacheError, OSError):
        return None


def _warn(message: str) -> None:
    """A ``UserWarning`` attributed to the first caller outside ``anatomy`` (not to a line of this package)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("anatomy"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)
