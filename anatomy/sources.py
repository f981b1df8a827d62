"""Where a model comes from: one entry point, ``load``, for every source.

>>> specimen = load("toy")             # trained on coloured shapes, shipped in the package, ~1 s
>>> specimen = load("tiny")            # random, seeded, CPU, under a second
>>> specimen = load("7B")              # the released 7B layout on the meta device, no weights
>>> specimen = load("Qwen/Qwen2.5-VL-7B-Instruct", device="cuda")   # real weights

Every source gives a ``Specimen`` (``anatomy.model``): the transformers model,
its processor, and what kind of model it is. This module only dispatches: the
shipped configs, skeletons and the tiny model are built in ``anatomy.model``,
the toy in ``anatomy.toy``.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

from anatomy import toy
from anatomy.model import ATTENTION_KERNELS, PUBLISHED_SIZES, TINY, TOY, Specimen, skeleton, tiny


def load(
    source: str = TOY,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str = "sdpa",
    seed: int | None = None,
) -> Specimen:
    """Load a Qwen2.5-VL from any source.

    Args:
        source: ``"toy"`` (the default: trained on coloured shapes, shipped in the package;
            see ``anatomy.toy``), ``"tiny"`` (random, seeded),
            ``"3B"``/``"7B"``/``"32B"``/``"72B"`` (skeletons on the meta device),
            or a hub id / local directory holding real weights.
        dtype: weight dtype. Default: bfloat16 on a GPU (fp16 overflows in these
            models), float32 on the CPU.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        device_map: for real weights, an accelerate device map (``"auto"`` spreads
            the model over several GPUs); excludes ``device``.
        attn_implementation: attention kernel, one of ``ATTENTION_KERNELS``.
        seed: a non-negative integer. For ``"tiny"``, the seed of its random weights (default 0); for
            ``"toy"``, ``None`` (the default) is the shipped toy, an integer the toy retrained with that
            seed by ``python -m anatomy toy train --seed N`` (loaded from the cache, never trained here).
    """
    if not isinstance(source, (str, os.PathLike)) or not str(source):
        raise ValueError(f"source must be a non-empty string, got {source!r}")
    if attn_implementation not in ATTENTION_KERNELS:
        raise ValueError(f"attn_implementation={attn_implementation!r}; expected one of {ATTENTION_KERNELS}")
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63):
        raise ValueError(f"seed={seed!r}; expected a non-negative integer (or None)")
    if device is not None and device_map is not None:
        raise ValueError(f"pass device={device!r} or device_map={device_map!r}, not both")
    source = str(source)
    _check_name(source)
    if source in PUBLISHED_SIZES:
        return skeleton(source, attn_implementation)
    if source == TINY:
        return tiny(seed or 0, _dtype(dtype, device), device, attn_implementation)
    if source == TOY:
        recipe = None if seed is None else toy.Recipe(seed=seed)
        return toy.load_toy(_dtype(dtype, device), device, attn_implementation, recipe=recipe)
    return _pretrained(source, dtype, device, device_map, attn_implementation)


def _check_name(source: str) -> None:
    """Refuse a bare name that is none of the shipped sources and no local path ("8B", "7b", "TINY").

    A hub id has an owner ("Qwen/Qwen2.5-VL-7B-Instruct"), so a bare name that is not a path is a typo.
    """
    names = [TOY, TINY, *PUBLISHED_SIZES]
    if source in names or "/" in source or os.sep in source or Path(source).exists():
        return
    close = [name for name in names if name.lower() == source.lower()]
    close = close or difflib.get_close_matches(source.upper(), PUBLISHED_SIZES, n=2, cutoff=0.5)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise ValueError(
        f"no model source {source!r}: {hint}sources are {', '.join(map(repr, names))} (case matters), "
        f"a hub id such as 'Qwen/Qwen2.5-VL-7B-Instruct', or a local directory"
    )


def _dtype(dtype: torch.dtype | str | None, device: str | torch.device | None) -> torch.dtype:
    if dtype is None:
        on_gpu = device is not None and torch.device(device).type == "cuda"
        return torch.bfloat16 if on_gpu else torch.float32
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype={dtype!r} is not a torch dtype name; expected e.g. 'bfloat16' or 'float32'")
        return getattr(torch, dtype)
    return dtype


def _pretrained(source: str, dtype, device, device_map, attn_implementation: str) -> Specimen:
    _check_config_json(Path(source) / "config.json")
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as error:
        raise FileNotFoundError(_missing_message(source)) from error
    if config.model_type != "qwen2_5_vl":
        raise ValueError(
            f"{source!r} is a {config.model_type!r} model; anatomy dissects Qwen2.5-VL (model_type 'qwen2_5_vl')"
        )
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        source,
        dtype=_dtype(dtype, device if device_map is None else "cuda"),
        device_map=device_map or device,
        attn_implementation=attn_implementation,
    )
    return Specimen(model.eval(), source, "pretrained", functools.partial(AutoProcessor.from_pretrained, source))


def _check_config_json(path: Path) -> None:
    """A local config.json that is not JSON is reported as such (transformers calls it a missing model)."""
    if not path.is_file():
        return
    try:
        json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not valid JSON ({error}); repair or re-download that file") from None


def _missing_message(source: str) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    where = "the Hugging Face cache (HF_HUB_OFFLINE=1, so the hub was not asked)" if offline else "the hub"
    return (
        f"no Qwen2.5-VL checkpoint at {source!r}: it is not a local directory with a config.json, "
        f"and it is not in {where}. Download it where there is internet, e.g. "
        f"`hf download {source} --local-dir ./{Path(source).name}`, then load('./{Path(source).name}'); "
        f"or use a source that needs no download: 'toy', 'tiny', {', '.join(repr(s) for s in PUBLISHED_SIZES)}."
    )
