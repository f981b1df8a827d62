"""From an image and a question to the tensors the model takes.

>>> spec = anatomy.load("tiny")
>>> batch = encode(spec, image=demo_image(), text="What is the text in the illustrate?")
>>> sorted(batch)   # input_ids (1, S), pixel_values (patches, 1176), image_grid_thw (1, 3), ...
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

MAX_ASPECT_RATIO = 200
SEED_QUESTION = "What is the text in the illustrate?"
SEED_SYSTEM = "You are a helpful assistant."


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


def chat(image=None, text: str = SEED_QUESTION, system: str | None = SEED_SYSTEM) -> list[dict]:
    """The seed's request as chat messages: optional system message, then image + text."""
    content = ([{"type": "image", "image": load_image(image)}] if image is not None else []) + [
        {"type": "text", "text": text}
    ]
    messages = [{"role": "system", "content": system}] if system is not None else []
    return messages + [{"role": "user", "content": content}]


def encode(specimen, image=None, text: str = SEED_QUESTION, messages: list[dict] | None = None):
    """Apply the chat template and the image processor: the model's keyword arguments.

    Returns a ``BatchFeature`` with ``input_ids`` (1, S), ``attention_mask`` (1, S),
    ``mm_token_type_ids`` (1, S) and, with an image, ``pixel_values``
    (patches, 1176) and ``image_grid_thw`` (1, 3), on the model's device.
    """
    messages = messages if messages is not None else chat(image, text)
    batch = specimen.processor.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    return batch.to(specimen.device)


def demo_image(width: int = 448, height: int = 336) -> Image.Image:
    """A deterministic test picture: a sky gradient, a sun, a red house and a caption bar."""
    if width < 28 or height < 28:
        raise ValueError(f"demo image of {width}x{height}; expected at least 28x28")
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = (1 - y) * np.array([90, 150, 230]) + y * np.array([200, 225, 255])
    image = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    unit = min(width, height) / 12
    draw.rectangle([0, height * 0.72, width, height], fill=(70, 150, 60))
    draw.ellipse([width - 3.5 * unit, unit, width - unit, 3.5 * unit], fill=(250, 210, 40))
    house = (width * 0.2, height * 0.45, width * 0.2 + 4 * unit, height * 0.72)
    draw.rectangle(house, fill=(200, 40, 40))
    roof = [(house[0] - unit / 2, house[1]), (house[2] + unit / 2, house[1]), ((house[0] + house[2]) / 2, house[1] - 2 * unit)]
    draw.polygon(roof, fill=(120, 60, 30))
    draw.rectangle([width * 0.55, height * 0.80, width * 0.95, height * 0.93], fill=(255, 255, 255))
    draw.text((width * 0.57, height * 0.82), "QWEN", fill=(0, 0, 0))
    return image

