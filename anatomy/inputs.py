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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from anatomy.model import token_kinds
from anatomy.processor import MAX_ASPECT_RATIO, PATCH_SIZE

REFERENCE_QUESTION = "What is the text in the illustrate?"  # sic: the reference request's wording
DEFAULT_SYSTEM = "You are a helpful assistant."


def load_image(image: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """Read an image from a path, a PIL image or an (H, W, 3) uint8 array, as RGB.

    Refuses what the Qwen2.5-VL processor would refuse later, with a message
    naming the value: a missing or unreadable file, an empty image, an aspect
    ratio above 200.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} does not exist or is not a file")
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"image {str(path)!r} cannot be read as an image: {error}") from error
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image array has shape {image.shape}; expected (height, width, 3)")
        image = Image.fromarray(image.astype(np.uint8))
    elif not isinstance(image, Image.Image):
        raise TypeError(f"image is a {type(image).__name__}; expected a path, a PIL image or an (H, W, 3) array")
    return _checked(image.convert("RGB"))


def _checked(image: Image.Image) -> Image.Image:
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"image is empty ({width}x{height} pixels); expected at least 1x1")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"image of {width}x{height} pixels has aspect ratio {ratio:.1f}; "
            f"Qwen2.5-VL accepts at most {MAX_ASPECT_RATIO}"
        )
    return image


def request_messages(image=None, text: str = REFERENCE_QUESTION, system: str | None = DEFAULT_SYSTEM) -> list[dict]:
    """Chat messages in the processor's form: optional system message, then one user turn of image + text.

    >>> [m["role"] for m in request_messages(text="Hi")], request_messages(text="Hi", system=None)[0]["content"]
    (['system', 'user'], [{'type': 'text', 'text': 'Hi'}])
    """
    content = ([{"type": "image", "image": load_image(image)}] if image is not None else []) + [
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


def encode(specimen, image=None, text: str = REFERENCE_QUESTION, messages: list[dict] | None = None) -> Prompt:
    """Apply the chat template and the image processor: a ``Prompt`` on the model's device.

    ``messages`` replaces the default ``request_messages(image, text)`` (its images are read from its content).
    """
    messages = messages if messages is not None else request_messages(image, text)
    batch = specimen.processor.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    images = [part["image"] for turn in messages if isinstance(turn["content"], list) for part in turn["content"]
              if part.get("type") == "image"]
    kinds = token_kinds(specimen.config, batch["input_ids"])
    return Prompt(batch.to(specimen.device), [load_image(image) for image in images], kinds)


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
    return load_image(image).resize((cols * PATCH_SIZE, rows * PATCH_SIZE), Image.Resampling.BICUBIC)


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

