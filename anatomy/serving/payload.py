"""The chat request the reference request sends, built from local files, URLs or PIL images.

An OpenAI chat request is a list of messages; a user message carries a list of
content items, and an image travels as a URL: an http(s) address the server
fetches, or the image itself inlined as a ``data:`` URL.

For example, ``chat_messages(REFERENCE_QUESTION, images=["https://x/qwen.png"])`` gives
``[{"role": "system", "content": "You are a helpful assistant."},
{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/qwen.png"}},
{"type": "text", "text": "What is the text in the illustrate?"}]}]``, and
``reference_payload()`` is the body of the reference request's curl request.
"""

from __future__ import annotations

import base64
import io
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from anatomy.inputs import DEFAULT_SYSTEM, REFERENCE_QUESTION

REFERENCE_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
REFERENCE_IMAGE_URL = "https://modelscope.oss-cn-beijing.aliyuncs.com/resource/qwen.png"
VIDEO_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime", ".avi": "video/x-msvideo"}


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://", "data:"))


def _data_url(mime: str, data: bytes) -> str:
    """``data:{mime};base64,{data}``: the bytes themselves, inlined in the request."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _pil_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless, so the server sees exactly these pixels
    return _data_url("image/png", buffer.getvalue())


def _file_image_url(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist (or is not a file)")
    try:
        with Image.open(path) as image:
            mime = Image.MIME.get(image.format or "", "")
    except UnidentifiedImageError as error:
        raise ValueError(f"{str(path)!r} is not an image file PIL can read") from error
    except Image.DecompressionBombError:
        raise ValueError(f"{str(path)!r} declares more pixels than PIL decodes (a decompression bomb?)") from None
    if not mime.startswith("image/"):
        raise ValueError(f"{str(path)!r} is a {mime or 'unknown'} file, not an image with a MIME type")
    return _data_url(mime, path.read_bytes())


def image_url(image: str | os.PathLike | Image.Image) -> str:
    """The URL an ``image_url`` item carries for ``image``.

    ``image`` is an http(s) or data URL (kept as is), a local file path or ``file://``
    URL (read, inlined as a base64 data URL), or a PIL image (encoded as PNG, inlined).
    """
    if isinstance(image, Image.Image):
        return _pil_data_url(image)
    if isinstance(image, str) and image.startswith("file://"):
        return _file_image_url(Path(urllib.parse.unquote(urllib.parse.urlparse(image).path)))
    if isinstance(image, str) and _is_url(image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return _file_image_url(Path(image))
    raise TypeError(f"image must be a URL, a file path or a PIL image, got {type(image).__name__}: {image!r}")


def video_url(video: str | os.PathLike) -> str:
    """The URL a ``video_url`` item carries: an http(s)/data URL, or a local video file inlined."""
    if isinstance(video, str) and _is_url(video):
        return video
    if not isinstance(video, (str, os.PathLike)):
        raise TypeError(f"video must be a URL or a file path, got {type(video).__name__}: {video!r}")
    path = Path(video)
    if not path.is_file():
        raise FileNotFoundError(f"video file {str(path)!r} does not exist (or is not a file)")
    if path.suffix.lower() not in VIDEO_TYPES:
        raise ValueError(f"{str(path)!r}: unknown video type {path.suffix!r}; expected one of {list(VIDEO_TYPES)}")
    return _data_url(VIDEO_TYPES[path.suffix.lower()], path.read_bytes())


def chat_messages(
    text: str,
    images: Sequence[str | os.PathLike | Image.Image] = (),
    videos: Sequence[str | os.PathLike] = (),
    system: str | None = DEFAULT_SYSTEM,
) -> list[dict]:
    """The reference request's messages: a system message, then one user message with the
    images, the videos and the text, in that order (the reference request puts the image first).
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    for name, items in (("images", images), ("videos", videos)):
        if isinstance(items, (str, os.PathLike, Image.Image)):
            raise TypeError(f"{name} must be a list of items, got a single {type(items).__name__}: {items!r}")
    content = [{"type": "image_url", "image_url": {"url": image_url(image)}} for image in images]
    content += [{"type": "video_url", "video_url": {"url": video_url(video)}} for video in videos]
    content.append({"type": "text", "text": text})
    head = [{"role": "system", "content": system}] if system is not None else []
    return [*head, {"role": "user", "content": content}]


def chat_payload(model: str, messages: list[dict], max_tokens: int | None = None) -> dict:
    """The JSON body of ``POST /v1/chat/completions``: the reference request's fields, and ``max_tokens`` if given."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be the served model's name (a non-empty string), got {model!r}")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"messages must be a non-empty list of chat messages, got {messages!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
    payload = {"model": model, "messages": messages}
    return payload if max_tokens is None else {**payload, "max_tokens": max_tokens}


def reference_payload() -> dict:
    """The reference request's curl body, field for field."""
    return chat_payload(REFERENCE_MODEL, chat_messages(REFERENCE_QUESTION, images=[REFERENCE_IMAGE_URL]))


def sample_image(text: str = "Qwen2.5-VL", size: tuple[int, int] = (280, 112)) -> Image.Image:
    """A small white image with ``text`` on it, the offline stand-in for the reference request's qwen.png.

    ``size`` is (width, height), PIL's order: the default is 112 x 280 px (height x width), 4 x 10 cells of
    28 px, so 40 ``<|image_pad|>`` tokens.
    """
    image = Image.new("RGB", size, "white")
    font = ImageFont.load_default(size=size[1] // 3)  # a scalable font, a third of the height
    ImageDraw.Draw(image).text((size[0] // 2, size[1] // 2), text, fill="black", font=font, anchor="mm")
    return image
