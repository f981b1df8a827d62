"""``load_toy``: the trained toy Qwen2.5-VL, trained on first use and cached.

>>> specimen = load_toy()            # first call: trains (~3 min on 2 CPU cores), later calls: ~1 s
>>> specimen.kind
'toy'
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.utils import logging as hf_logging

from anatomy.model import ATTENTION_KERNELS, Specimen
from anatomy.processor import offline_processor
from anatomy.toy.cache import CacheError, cache_dir, discard, save, verify
from anatomy.toy.training import Log, Recipe, initial_model, toy_config, train


def load_toy(
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    recipe: Recipe = Recipe(),
    retrain: bool = False,
    progress: bool = True,
) -> Specimen:
    """The toy model trained with ``recipe``: from the cache if it verifies, else trained now and cached.

    A cache whose files do not match their manifest is reported (a warning), removed and retrained.
    ``retrain=True`` trains anew even over a good cache.
    """
    if attn_implementation not in ATTENTION_KERNELS:
        raise ValueError(f"attn_implementation={attn_implementation!r}; expected one of {ATTENTION_KERNELS}")
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be an anatomy.toy.Recipe, got {type(recipe).__name__}")
    directory = ensure_trained(recipe, retrain=retrain, progress=progress)
    with _no_loading_bar():
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            directory, dtype=dtype, attn_implementation=attn_implementation
        )
    return Specimen(model.to(device or "cpu").eval(), "toy", "toy")


@contextlib.contextmanager
def _no_loading_bar():
    """No "Loading weights" bar for a load of a second: in Jupyter it is a widget, which a saved notebook
    shows as "Error displaying widget: model not found" once its kernel is gone."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def untrained_toy(recipe: Recipe = Recipe()) -> Specimen:
    """The toy model as ``recipe`` starts it, before any training: the random baseline of the evaluation."""
    return Specimen(initial_model(toy_config(), recipe.seed).eval(), "toy (untrained)", "untrained")


def ensure_trained(recipe: Recipe = Recipe(), retrain: bool = False, progress: bool = True) -> Path:
    """The verified cache directory of ``recipe``, training the model first if needed."""
    directory = cache_dir(recipe)
    if directory.exists() and not retrain:
        try:
            verify(directory)
            return directory
        except CacheError as error:
            warnings.warn(f"discarding the toy model cache and retraining: {error}", stacklevel=3)
    if directory.exists():
        discard(directory)
    start = time.perf_counter()
    log = Log()
    model = train(toy_config(), recipe, offline_processor(), progress=progress, log=log)
    seconds = round(time.perf_counter() - start, 1)
    save(model, directory, recipe, train_seconds=seconds, steps=log.steps, passed_at=log.passed_at, checks=log.checks)
    if log.passed_at is None:
        warnings.warn(
            f"the toy model did not pass its validation check in {recipe.max_steps} steps "
            f"(last check: {log.checks[-1] if log.checks else 'none'}); it is saved, but may answer badly",
            stacklevel=2,
        )
    return directory
