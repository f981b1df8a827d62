"""The model being dissected: ``Specimen``, the shipped configs, and where each part of Qwen2.5-VL sits.

Every lesson finds the parts of the model here, by one rule that does not
hard-wire a transformers version: the vision tower is the module whose children
include ``patch_embed``, ``merger`` and ``blocks``, the decoder the module whose
children include ``embed_tokens``, ``layers`` and ``norm``. The same rule reads
a parsed ``print(model)`` tree of transformers 4.49 (``visual``, ``model``) and
today's model (``model.visual``, ``model.language_model``):

>>> paths = ["", "model", "model.visual", "model.visual.patch_embed", "model.visual.merger", "model.visual.blocks"]
>>> locate(paths, *VISION_CHILDREN)
'model.visual'
>>> token_kinds(shipped_config("tiny"), torch.tensor([[9707, 151655, 151655, 151656]])).tolist()
[0, 1, 1, 2]
>>> select(None, 3, "layer"), select(2, 3, "layer")
([0, 1, 2], [2])
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from anatomy.processor import offline_processor

PUBLISHED_SIZES = ("3B", "7B", "32B", "72B")
TINY = "tiny"
TOY = "toy"
KINDS = ("toy", "tiny", "untrained", "skeleton", "pretrained")
ATTENTION_KERNELS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
VISION_CHILDREN = ("patch_embed", "merger", "blocks")
DECODER_CHILDREN = ("embed_tokens", "layers", "norm")
TEXT, IMAGE, VIDEO = 0, 1, 2
KIND_NAMES = ("text", "image", "video")


@dataclass
class Specimen:
    """A loaded Qwen2.5-VL and everything needed to feed it.

    Attributes:
        model: the ``Qwen2_5_VLForConditionalGeneration``.
        processor: the ``Qwen2_5_VLProcessor`` (tokenizer, chat template, image and video processors).
        source: what ``anatomy.load`` was asked for: ``"toy"``, ``"tiny"``, ``"7B"``, a hub id or a directory.
        kind: one of ``KINDS``: ``"toy"`` (trained on the shapes task, shipped), ``"tiny"`` (random weights),
            ``"untrained"`` (the toy's architecture at its random initialisation), ``"skeleton"`` (meta
            device, no weights), or ``"pretrained"`` (weights from a hub id or directory).
    """

    model: Qwen2_5_VLForConditionalGeneration
    source: str
    kind: str
    make_processor: Callable[[], object] = field(default=offline_processor, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}; expected one of {KINDS}")

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
    """The complete config shipped for ``name``, read without any library default filling a gap.

    >>> shipped_config("7B").vision_config.fullatt_block_indexes
    [7, 15, 23, 31]
    """
    config = Qwen2_5_VLConfig(**json.loads(config_path(name).read_text()))
    config._attn_implementation = attn_implementation
    return config


def skeleton(size: str, attn_implementation: str = "sdpa") -> Specimen:
    """A released layout (``"3B"``...``"72B"``) on the meta device: every module and shape, no weights."""
    config = shipped_config(size, attn_implementation)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)  # the released dtype
    return Specimen(model.eval(), size, "skeleton")


def tiny(seed: int = 0, dtype: torch.dtype = torch.float32, device=None, attn_implementation: str = "sdpa") -> Specimen:
    """The tiny config with random weights drawn from ``seed``, leaving the global RNG as it was."""
    config = shipped_config(TINY, attn_implementation)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return Specimen(model.to(dtype=dtype, device=device or "cpu").eval(), TINY, "tiny")


def unwrap(model, qwen: bool = True) -> nn.Module:
    """The ``nn.Module`` inside a ``Specimen``, or the module itself.

    With ``qwen`` (the default) anything but a Qwen2.5-VL (``model_type`` ``"qwen2_5_vl"``) is refused.
    """
    if not isinstance(model, nn.Module):
        model = getattr(model, "model", model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a Specimen or a torch nn.Module, got {type(model).__name__}: {model!r:.60}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if qwen and model_type != "qwen2_5_vl":
        raise TypeError(
            f"expected a Qwen2.5-VL model (model_type 'qwen2_5_vl') or a Specimen from anatomy.load, "
            f"got {type(model).__name__} with model_type {model_type!r}"
        )
    return model


def join(*parts: str) -> str:
    """A dotted module path from its parts, the empty ones (the root) left out: ``join("", "lm_head")``."""
    return ".".join(part for part in parts if part)


def locate(paths: Iterable[str] | nn.Module, *children: str) -> str:
    """Path of the first module whose children include all ``children``; ``paths`` are module paths
    (a parsed tree's keys) or a model, whose ``named_modules`` are read."""
    if isinstance(paths, nn.Module):
        paths = (path for path, _ in paths.named_modules())
    paths = list(paths)
    known = set(paths)
    for path in paths:
        if all(join(path, child) in known for child in children):
            return path
    raise ValueError(f"no module with children {children} in this model; expected a Qwen2.5-VL model")


def tower_paths(paths: Iterable[str] | nn.Module) -> dict[str, str]:
    """Where the two towers sit: ``{"vision": "model.visual", "decoder": "model.language_model"}`` today."""
    paths = list(paths) if not isinstance(paths, nn.Module) else [p for p, _ in paths.named_modules()]
    return {"vision": locate(paths, *VISION_CHILDREN), "decoder": locate(paths, *DECODER_CHILDREN)}


def vision_tower(model) -> nn.Module:
    """The vision tower (``Qwen2_5_VisionTransformerPretrainedModel``) of a Specimen or model."""
    model = unwrap(model)
    return model.get_submodule(locate(model, *VISION_CHILDREN))


def decoder(model) -> nn.Module:
    """The decoder (``Qwen2_5_VLTextModel``): token embedding, layers, final norm, rotary."""
    model = unwrap(model)
    return model.get_submodule(locate(model, *DECODER_CHILDREN))


def multimodal(model) -> nn.Module:
    """The module holding both towers (``Qwen2_5_VLModel``): ``get_rope_index``, ``rope_deltas``."""
    model = unwrap(model)
    return model.get_submodule(locate(model, *VISION_CHILDREN).rpartition(".")[0])


def vision_blocks(model) -> nn.ModuleList:
    return vision_tower(model).blocks


def decoder_layers(model) -> nn.ModuleList:
    return decoder(model).layers


def head_path(model) -> str:
    """Module path of ``lm_head`` (``"lm_head"`` today)."""
    return join(locate(unwrap(model), "lm_head"), "lm_head")


def lm_head(model) -> nn.Module:
    return unwrap(model).get_submodule(head_path(model))


def block_kinds(vision_config) -> list[str]:
    """``"full"`` or ``"window"`` for every vision block, in order.

    >>> block_kinds(shipped_config("toy").vision_config)
    ['window', 'full', 'window', 'full']
    """
    full = set(vision_config.fullatt_block_indexes)
    return ["full" if i in full else "window" for i in range(vision_config.depth)]


def token_kinds(config, input_ids: torch.Tensor) -> torch.Tensor:
    """(seq,) ``TEXT`` (0), ``IMAGE`` (1) or ``VIDEO`` (2) for every token, from (seq,) or (1, seq) ids."""
    ids = input_ids.reshape(-1).cpu()
    kinds = torch.zeros_like(ids)
    kinds[ids == config.image_token_id] = IMAGE
    kinds[ids == config.video_token_id] = VIDEO
    return kinds


def text_config(config):
    """The decoder's config, from a full Qwen2.5-VL config or a text config."""
    return getattr(config, "text_config", config)


def select(chosen, count: int, what: str) -> list[int]:
    """Indices in ``range(count)`` as a list: ``None`` is all, an int is one.

    Raises ValueError naming ``what`` and the valid range for anything else.
    """
    picked = list(range(count)) if chosen is None else [chosen] if isinstance(chosen, int) else list(chosen)
    bad = [i for i in picked if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count]
    if bad or not picked:
        raise ValueError(f"{what} {bad or chosen!r} out of range; expected {what}s in 0..{count - 1} (or None: all)")
    return picked


def check_layers(config, layers) -> list[int]:
    """Decoder layer indices: ``None`` every layer, an int one layer."""
    return select(layers, text_config(config).num_hidden_layers, "layer")


def check_heads(config, heads) -> list[int]:
    """Decoder query head indices: ``None`` every head, an int one head."""
    return select(heads, text_config(config).num_attention_heads, "head")


def tokenizer_of(specimen):
    """The tokenizer of a ``Specimen``, a processor, or the tokenizer itself."""
    return _part_of(specimen, "tokenizer", "added_tokens_decoder", "a tokenizer")


def image_processor_of(specimen):
    """The image processor of a ``Specimen``, a processor, or the image processor itself."""
    return _part_of(specimen, "image_processor", "get_number_of_image_patches", "a Qwen2-VL image processor")


def _part_of(specimen, name: str, marker: str, what: str):
    """``specimen.processor.<name>``, ``processor.<name>`` or the part itself, known by its ``marker`` attribute."""
    holder = getattr(specimen, "processor", specimen)
    part = getattr(holder, name, holder)
    if not hasattr(part, marker):
        raise TypeError(f"expected a Specimen, a processor or {what}, got {type(holder).__name__}: {holder!r:.60}")
    return part
