"""The toy's weights on disk: what training changed, as safetensors, and the embedding as a seed.

A toy directory (the shipped one, ``SHIPPED``, or a retrained one in the cache):

    model.safetensors   every trained tensor (0.64M parameters, 2.6 MB), the embedding left out
    curve.json          the learning curve: one entry per validation check (``training.Log.curve``)
    manifest.json       sha256 of both files; the embedding's seed, generator and sha256; the
                        recipe, versions, thread count, steps and wall time of the training

``read_model`` rebuilds the stock ``Qwen2_5_VLForConditionalGeneration``: the
embedding regenerated from its seed (``embedding.frozen_embedding``) must hash
to the manifest's sha256, or it stops with one ``CacheError``.

>>> model, manifest = read_model(SHIPPED)       # doctest: +SKIP
"""

from __future__ import annotations

import json
import platform
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration

from anatomy.toy.cache import CODE_VERSION, MANIFEST, CacheError, scratch_beside, sha256, swap_in, verify
from anatomy.toy.embedding import GENERATOR, tensor_sha256
from anatomy.toy.training import Log, Recipe, initial_model, toy_config

SHIPPED = Path(str(resources.files("anatomy") / "toy" / "shipped"))
WEIGHTS, CURVE = "model.safetensors", "curve.json"
EMBEDDING = "model.language_model.embed_tokens.weight"  # tied: lm_head.weight is the same tensor


def trained_state(model) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.state_dict()`` but the tied embedding / unembedding."""
    embedding = model.get_input_embeddings().weight
    return {k: v.contiguous() for k, v in model.state_dict().items() if v.data_ptr() != embedding.data_ptr()}


def write_model(model, directory: Path, recipe: Recipe, log: Log, **facts) -> dict:
    """Write ``model`` to ``directory`` whole (``cache.swap_in``); returns the manifest. ``facts`` are recorded."""
    directory = Path(directory)
    scratch = scratch_beside(directory)
    try:
        save_file(trained_state(model), scratch / WEIGHTS)
        (scratch / WEIGHTS).chmod(0o644)  # safetensors writes it private; the directory is readable by all
        (scratch / CURVE).write_text(json.dumps(log.curve, indent=1) + "\n")
        embedding = model.get_input_embeddings().weight
        manifest = {
            "files": {name: sha256(scratch / name) for name in (WEIGHTS, CURVE)},
            "embedding": {"seed": recipe.seed, "generator": GENERATOR, "shape": list(embedding.shape),
                          "std": model.config.text_config.initializer_range, "sha256": tensor_sha256(embedding)},
            "recipe": recipe.to_dict(), "code_version": CODE_VERSION, "steps": log.steps, "passed_at": log.passed_at,
            "versions": versions(), **facts,
        }  # fmt: skip
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # last: marks it finished
        swap_in(scratch, directory)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # gone already after a successful swap
    return manifest


def read_model(directory: Path, attn_implementation: str = "sdpa") -> tuple[Qwen2_5_VLForConditionalGeneration, dict]:
    """The model stored in ``directory``, and its manifest, once every hash matches; else one ``CacheError``."""
    manifest = verify(directory)
    facts = manifest.get("embedding")
    if not isinstance(facts, dict) or facts.get("generator") != GENERATOR:
        raise CacheError(f"{directory / MANIFEST} does not describe its embedding with generator {GENERATOR!r}")
    model = initial_model(toy_config(attn_implementation), int(facts["seed"]))  # the frozen embedding regenerated
    embedding = tensor_sha256(model.get_input_embeddings().weight)
    if embedding != facts["sha256"]:
        raise CacheError(
            f"the toy's frozen embedding regenerated from seed {facts['seed']} ({GENERATOR}) has sha256 "
            f"{embedding[:16]}..., not {facts['sha256'][:16]}... as recorded in {directory / MANIFEST}: "
            f"this machine (numpy {np.__version__}, {platform.machine()}) computes another stream; not loading "
            "a different model"
        )
    missing, unexpected = model.load_state_dict(load_file(directory / WEIGHTS), strict=False)
    if unexpected or set(missing) - {EMBEDDING, "lm_head.weight"}:
        raise CacheError(
            f"{directory / WEIGHTS} does not fit the toy config: missing {missing}, unexpected {unexpected}"
        )
    return model.eval(), manifest


def read_curve(directory: Path = SHIPPED) -> list[dict]:
    """The learning curve recorded beside the weights in ``directory`` (hash checked): ``training.Log.curve``."""
    verify(directory)
    return json.loads((Path(directory) / CURVE).read_text())


def versions() -> dict:
    """The versions and machine a training ran on."""
    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "threads": torch.get_num_threads()}  # fmt: skip
