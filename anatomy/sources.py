"""Where a model comes from: one entry point, ``load``, for every source.

>>> spec = load("toy")             # trained on coloured shapes, shipped in the package, ~1 s
>>> spec = load("tiny")            # random, seeded, CPU, under a second
>>> spec = load("7B")              # the released 7B layout on the meta device, no weights
>>> spec = load("Qwen/Qwen2.5-VL-7B-Instruct", device="cuda")   # real weights

Every source gives a ``Specimen``: the transformers model, its processor, and
what kind of model it is.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from anatomy.processor import offline_processor

PUBLISHED_SIZES = ("3B", "7B", "32B", "72B")
TINY = "tiny"
TOY = "toy"
ATTENTION_KERNELS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass
class Specimen:
    """A loaded Qwen2.5-VL and everything needed to feed it.

    Attributes:
        model: the ``Qwen2_5_VLForConditionalGeneration``.
        processor: the ``Qwen2_5_VLProcessor`` (tokenizer, chat template, image and video processors).
        source: what was asked for: ``"toy"``, ``"tiny"``, ``"7B"``, a hub id or a directory.
        kind: ``"toy"`` (trained on the shapes task), ``"tiny"`` (random weights),
            ``"skeleton"`` (meta device, no weights), or ``"pretrained"`` (weights from a hub id or directory).
    """

    model: Qwen2_5_VLForConditionalGeneration
    source: str
    kind: str
    make_processor: Callable[[], object] = field(default=offline_processor, repr=False)

    @functools.cached_property
    def processor(self):
        """The processor, built on first use (the offline one takes ~0.7 s, a skeleton ~0.1 s)."""
        return self.make_processor()

    @property
    def config(self) -> Qwen2_5_VLConfig:
        return self.model.config

    @property
    def has_weights(self) -> bool:
        return self.kind != "skeleton"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        text = self.config.text_config
        return (
            f"Specimen(source={self.source!r}, kind={self.kind!r}, device={self.device}, "
            f"dtype={self.model.dtype}, decoder={text.num_hidden_layers}x{text.hidden_size}, "
            f"vision={self.config.vision_config.depth}x{self.config.vision_config.hidden_size})"
        )


def config_path(name: str) -> Path:
    """Path of a shipped config: ``"tiny"``, ``"toy"`` or one of ``"3B"``, ``"7B"``, ``"32B"``, ``"72B"``."""
    if name not in (TINY, TOY, *PUBLISHED_SIZES):
        raise ValueError(f"no shipped config named {name!r}; expected one of {[TINY, TOY, *PUBLISHED_SIZES]}")
    return Path(str(resources.files("anatomy") / "configs" / f"qwen2_5_vl_{name.lower()}.json"))


def shipped_config(name: str, attn_implementation: str = "sdpa") -> Qwen2_5_VLConfig:
    """The complete config shipped for ``name``, read without any library default filling a gap."""
    config = Qwen2_5_VLConfig(**json.loads(config_path(name).read_text()))
    config._attn_implementation = attn_implementation
    return config


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
    if source in PUBLISHED_SIZES:
        return _skeleton(source, attn_implementation)
    if source == TINY:
        return _tiny(seed or 0, _dtype(dtype, device), device, attn_implementation)
    if source == TOY:
        from anatomy.toy import Recipe, load_toy  # the toy imports this module

        recipe = None if seed is None else Recipe(seed=seed)
        return load_toy(_dtype(dtype, device), device, attn_implementation, recipe=recipe)
    return _pretrained(source, dtype, device, device_map, attn_implementation)


def _dtype(dtype: torch.dtype | str | None, device: str | torch.device | None) -> torch.dtype:
    if dtype is None:
        on_gpu = device is not None and torch.device(device).type == "cuda"
        return torch.bfloat16 if on_gpu else torch.float32
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype={dtype!r} is not a torch dtype name; expected e.g. 'bfloat16' or 'float32'")
        return getattr(torch, dtype)
    return dtype


def _skeleton(size: str, attn_implementation: str) -> Specimen:
    config = shipped_config(size, attn_implementation)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)  # the released dtype
    return Specimen(model.eval(), size, "skeleton")


def _tiny(seed: int, dtype: torch.dtype, device, attn_implementation: str) -> Specimen:
    config = shipped_config(TINY, attn_implementation)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model = model.to(dtype=dtype, device=device or "cpu").eval()
    return Specimen(model, TINY, "tiny")


def _pretrained(source: str, dtype, device, device_map, attn_implementation: str) -> Specimen:
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


def _missing_message(source: str) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    where = "the Hugging Face cache (HF_HUB_OFFLINE=1, so the hub was not asked)" if offline else "the hub"
    return (
        f"no Qwen2.5-VL checkpoint at {source!r}: it is not a local directory with a config.json, "
        f"and it is not in {where}. Download it where there is internet, e.g. "
        f"`hf download {source} --local-dir ./{Path(source).name}`, then load('./{Path(source).name}'); "
        f"or use a source that needs no download: 'toy', 'tiny', {', '.join(repr(s) for s in PUBLISHED_SIZES)}."
    )
