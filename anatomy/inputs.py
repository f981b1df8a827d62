"""From an image and a question to the tensors the model takes, and the layout that goes with them.

>>> specimen = anatomy.load("tiny")
>>> prompt = encode(specimen, image=demo_image(), text=REFERENCE_QUESTION)
>>> sorted(prompt)          # the model's keyword arguments: specimen.model(**prompt)
['attention_mask', 'image_grid_thw', 'input_ids', 'mm_token_type_ids', 'pixel_values']
>>> prompt.kinds[:3]        # TEXT (0), IMAGE (1) or VIDEO (2) for every token
tensor([0, 0, 0])

The reference request (the project's starting note) asks the 7B "What is the
text in the illustrate?" about one picture, with the default system message;
``REFERENCE_QUESTION`` keeps that wording verbatim.

One rule for every picture, here and in ``anatomy.serving`` (``transformers serve``
and its ``load_image`` apply it too): the EXIF orientation is applied, so a phone
photo is upright, as a phone shows it. A picture above ``max_pixels`` (default
1280 x 28 x 28 = 1,003,520 px, Qwen's suggested cap; the released processor allows
12.8 M) is scaled down the way the processor's ``max_pixels`` does it, with a warning,
so a user's own photo cannot exhaust memory.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from anatomy.model import token_kinds
from anatomy.processor import FACTOR, PATCH_SIZE, check_max_pixels, check_size, resize_plan

REFERENCE_QUESTION = "What is the text in the illustrate?"  # sic: the reference request's wording
DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_MAX_PIXELS = 1280 * 28 * 28  # 1,003,520 px: at most 1280 image tokens
MAX_DECODE_PIXELS = Image.MAX_IMAGE_PIXELS  # 89,478,485: above it PIL warns of a decompression bomb
MAX_IMAGE_BYTES = 32 * 2**20  # the most a URL may bring (downloaded or inlined)
FETCH_TIMEOUT = 10.0  # seconds an http(s) image may take to answer


def load_image(image, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image as RGB, upright (EXIF orientation applied) and within ``max_pixels``.

    ``image``: a path, a ``file://``, ``data:`` or http(s) URL (fetched with a
    ``FETCH_TIMEOUT`` s timeout, at most ``MAX_IMAGE_BYTES``), a PIL image, or an
    (H, W, 3) array: uint8, integers in 0..255, or floats in [0, 1] (scaled by 255).
    ``max_pixels=None`` keeps every pixel. Refuses, with one message naming the
    value: a missing or unreadable file, a decompression bomb, an empty image, an
    aspect ratio above 200 (what the Qwen2.5-VL processor would refuse later).
    """
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:", "file://")):
        image = _open_bytes(_url_bytes(image), _short(image))
    elif isinstance(image, (str, Path)):
        image = _open_bytes(_file_bytes(Path(image)), repr(str(image)))
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(_uint8(image))
    elif not isinstance(image, Image.Image):
        raise TypeError(f"image is a {type(image).__name__}; expected a path, a URL, a PIL image or an (H, W, 3) array")
    image = _checked(ImageOps.exif_transpose(image).convert("RGB"))
    fitted, note = fit_pixels(image, max_pixels)
    if note:
        warnings.warn(note, stacklevel=2)
    return fitted


def fit_pixels(image: Image.Image, max_pixels: int | None) -> tuple[Image.Image, str | None]:
    """``image`` scaled down (bicubic, sides multiples of 28) to at most ``max_pixels``, and a note saying so.

    >>> fit_pixels(Image.new("RGB", (4032, 3024)), 1003520)[0].size    # a 12.2 MP phone photo
    (1148, 840)
    """
    check_max_pixels(max_pixels)
    if max_pixels is None or image.width * image.height <= max_pixels:
        return image, None
    height, width = resize_plan(image.height, image.width, FACTOR**2, max_pixels).resized
    note = (f"image of {image.width}x{image.height} px ({image.width * image.height / 1e6:.1f} MP) scaled to "
            f"{width}x{height} px to stay within max_pixels={max_pixels:,} ({max_pixels // 784} image tokens); "
            f"max_pixels (--max-pixels) sets the cap, None (0) removes it")  # fmt: skip
    return image.resize((width, height), Image.Resampling.BICUBIC), note


def _short(text: str, keep: int = 60) -> str:
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text):,} characters)"


def _file_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist or is not a file")
    return path.read_bytes()


def _open_bytes(data: bytes, name: str) -> Image.Image:
    """Decode image bytes, refusing a decompression bomb (above ``MAX_DECODE_PIXELS``) before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL warns when the header is read
            opened = Image.open(io.BytesIO(data))
            opened.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"image {name} declares more than {MAX_DECODE_PIXELS:,} pixels (a decompression bomb?); "
                         f"refused before decoding") from None  # fmt: skip
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"image {name} cannot be read as an image: {error}") from None
    return opened


def _url_bytes(url: str) -> bytes:
    """The bytes behind a data:, file:// or http(s) URL, at most ``MAX_IMAGE_BYTES``."""
    if url.startswith("file://"):
        return _file_bytes(Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)))
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64") or len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise ValueError(f"data URL {_short(url)} is not a base64 image of at most {MAX_IMAGE_BYTES:,} bytes")
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error as error:
            raise ValueError(f"data URL {_short(url)} is not valid base64: {error}") from None
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:
            data = response.read(MAX_IMAGE_BYTES + 1)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise ValueError(f"image URL {_short(url)} could not be fetched in {FETCH_TIMEOUT:g} s: "
                         f"{getattr(error, 'reason', error)}") from None  # fmt: skip
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"image URL {_short(url)} sends more than {MAX_IMAGE_BYTES:,} bytes; refused")
    return data


def _uint8(array: np.ndarray) -> np.ndarray:
    """An (H, W, 3) array as uint8: integers must lie in 0..255, floats in [0, 1] (times 255)."""
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image array has shape {array.shape}; expected (height, width, 3)")
    if array.dtype == np.uint8:
        return array
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if np.issubdtype(array.dtype, np.integer) and 0 <= low and high <= 255:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating) and 0 <= low and high <= 1:  # NaN fails both comparisons
        return np.round(array * 255).astype(np.uint8)
    raise ValueError(f"image array of dtype {array.dtype} has values in [{low}, {high}]; "
                     f"expected integers in 0..255 or floats in [0, 1]")  # fmt: skip


def _checked(image: Image.Image) -> Image.Image:
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"image is empty ({height} x {width} px, height x width); expected at least 1 x 1")
    check_size(height, width)
    return image


def request_messages(image=None, text: str = REFERENCE_QUESTION, system: str | None = DEFAULT_SYSTEM,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[dict]:  # fmt: skip
    """Chat messages in the processor's form: optional system message, then one user turn of image + text.

    >>> [m["role"] for m in request_messages(text="Hi")], request_messages(text="Hi", system=None)[0]["content"]
    (['system', 'user'], [{'type': 'text', 'text': 'Hi'}])
    """
    content = ([{"type": "image", "image": load_image(image, max_pixels)}] if image is not None else []) + [
        {"type": "text", "text": text}
    ]
    head = [{"role": "system", "content": system}] if system is not None else []
    return head + [{"role": "user", "content": content}]


@dataclass(eq=False)
class Prompt(Mapping):
    """An encoded prompt: the model's keyword arguments, and the layout figures read from it.

    It is a mapping of the processor's ``BatchFeature``, so ``specimen.model(**prompt)`` and
    ``prompt["input_ids"]`` work as with the batch itself.

    Attributes:
        batch: ``input_ids`` (1, S), ``attention_mask`` (1, S), ``mm_token_type_ids`` (1, S) and, with
            an image, ``pixel_values`` (patches, 1176) and ``image_grid_thw`` (images, 3).
        images: the images as given (RGB, original size), in prompt order.
        kinds: (S,) ``TEXT``, ``IMAGE`` or ``VIDEO`` for every token (``anatomy.model.token_kinds``).
    """

    batch: Mapping
    images: list = field(default_factory=list)
    kinds: torch.Tensor | None = None

    def __getitem__(self, key: str):
        return self.batch[key]

    def __iter__(self):
        return iter(self.batch)

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def image(self) -> Image.Image:
        """The first image of the prompt."""
        if not self.images:
            raise ValueError("this prompt has no image; encode one with encode(specimen, image, text)")
        return self.images[0]

    @property
    def grid_thw(self) -> torch.Tensor:
        """(images, 3) ``image_grid_thw`` on the CPU."""
        if "image_grid_thw" not in self.batch:
            raise ValueError("this prompt has no image; encode one with encode(specimen, image, text)")
        return self.batch["image_grid_thw"].cpu()


def encode(specimen, image=None, text: str = REFERENCE_QUESTION, messages: list[dict] | None = None,
           max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Prompt:  # fmt: skip
    """Apply the chat template and the image processor: a ``Prompt`` on the model's device.

    ``messages`` replaces the default ``request_messages(image, text)`` (its images are read from its content).
    An image above ``max_pixels`` is scaled down first (``load_image``).
    """
    messages = messages if messages is not None else request_messages(image, text, max_pixels=max_pixels)
    batch = specimen.processor.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    images = [part["image"] for turn in messages if isinstance(turn["content"], list) for part in turn["content"]
              if part.get("type") == "image"]
    images = [load_image(image, max_pixels=None) for image in images]  # as given: the messages' own
    kinds = token_kinds(specimen.config, batch["input_ids"])
    return Prompt(batch.to(specimen.device), images, kinds)


def resized(image, grid_thw) -> Image.Image:
    """The image at the size the processor resized it to, for drawing: (h*14, w*14) px for grid (t, h, w).

    ``grid_thw`` is one ``image_grid_thw`` row or a ``ResizePlan`` (its ``grid_thw``). Bicubic, like the processor.

    >>> resized(demo_image(64, 40), (1, 2, 4)).size
    (56, 28)
    """
    grid = getattr(grid_thw, "grid_thw", grid_thw)
    row = torch.as_tensor(grid).reshape(-1)
    if row.numel() != 3:
        raise ValueError(f"grid_thw {grid_thw!r} is not one (t, h, w) row; pass image_grid_thw[i]")
    _, rows, cols = (int(v) for v in row)
    return load_image(image, max_pixels=None).resize((cols * PATCH_SIZE, rows * PATCH_SIZE), Image.Resampling.BICUBIC)


def demo_image(height: int = 336, width: int = 448) -> Image.Image:
    """A deterministic test picture: a sky gradient, a sun, a red house and a caption bar.

    >>> demo_image(336, 448).size      # PIL gives (width, height)
    (448, 336)
    """
    if width < 28 or height < 28:
        raise ValueError(f"demo image of {height}x{width} (H x W); expected at least 28x28")
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = (1 - y) * np.array([90, 150, 230]) + y * np.array([200, 225, 255])
    image = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    unit = min(width, height) / 12
    draw.rectangle([0, height * 0.72, width, height], fill=(70, 150, 60))
    draw.ellipse([width - 3.5 * unit, unit, width - unit, 3.5 * unit], fill=(250, 210, 40))
    house = (width * 0.2, height * 0.45, width * 0.2 + 4 * unit, height * 0.72)
    draw.rectangle(house, fill=(200, 40, 40))
    roof = [(house[0] - unit / 2, house[1]), (house[2] + unit / 2, house[1]),
            ((house[0] + house[2]) / 2, house[1] - 2 * unit)]
    draw.polygon(roof, fill=(120, 60, 30))
    draw.rectangle([width * 0.55, height * 0.80, width * 0.95, height * 0.93], fill=(255, 255, 255))
    draw.text((width * 0.57, height * 0.82), "QWEN", fill=(0, 0, 0))
    return image

