"""From a chat request to what the model reads: the bridge between serving and anatomy.

A server turns the request's messages into one prompt with the chat template,
then the processor replaces each ``<|image_pad|>`` with one token per 28x28
pixel cell of the (resized) image. ``bridge`` does the same here, with the local
processor and nothing of the server, so its count is a reference for the
``prompt_tokens`` the server reports:

>>> b = bridge(specimen.processor, messages, answer)
>>> print(b)           # the prompt, 69 local tokens (40 of them the image) vs 69 reported
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers.image_utils import load_image as server_load_image

from anatomy.decoder.generation import answer_attention_figure
from anatomy.inputs import Prompt, load_image
from anatomy.model import token_kinds
from anatomy.serving.client import ChatAnswer

IMAGE_PAD = "<|image_pad|>"


def _processor_item(item: dict) -> dict:
    """One OpenAI content item as the processor's chat template wants it."""
    kind = item.get("type") if isinstance(item, dict) else None
    if kind == "text":
        return {"type": "text", "text": item["text"]}
    if kind == "image_url":
        return {"type": "image", "url": item["image_url"]["url"]}
    if kind == "video_url":
        return {"type": "video", "url": item["video_url"]["url"]}
    raise ValueError(f"unknown content item {item!r}; expected type 'text', 'image_url' or 'video_url'")


def processor_messages(messages: list[dict]) -> list[dict]:
    """OpenAI chat messages -> the processor's: ``image_url`` items become ``{"type": "image", "url": ...}``."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"messages must be a non-empty list of chat messages, got {messages!r}")
    converted = []
    for message in messages:
        content = message["content"]
        items = content if isinstance(content, str) else [_processor_item(item) for item in content]
        converted.append({"role": message["role"], "content": items})
    return converted


def served_prompt(processor, messages: list[dict]) -> str:
    """The prompt text the server builds: chat template applied, one ``<|image_pad|>`` per image."""
    return processor.apply_chat_template(processor_messages(messages), tokenize=False, add_generation_prompt=True)


def request_images(messages: list[dict]) -> list:
    """The request's images as the server sees them: decoded from their data URLs (or fetched, for
    http URLs, with ``anatomy.inputs``' timeout and size limit), upright (EXIF orientation applied,
    as ``transformers serve`` does), every pixel kept (no ``max_pixels`` cap: the server has none).
    """
    items = [item for message in processor_messages(messages) if not isinstance(message["content"], str)
             for item in message["content"]]  # fmt: skip
    if any(item["type"] == "video" for item in items):
        raise ValueError("the token bridge counts text and images; this request carries a video_url item")
    return [load_image(item["url"], max_pixels=None) for item in items if item["type"] == "image"]


def check_orientation(messages: list[dict], images: list) -> None:
    """Refuse when the server's decoder (transformers' ``load_image``) sees an inlined image at
    another size than ``request_images`` does: one orientation rule on both sides, or an error.
    """
    urls = [item["image_url"]["url"] for message in messages if not isinstance(message["content"], str)
            for item in message["content"] if item.get("type") == "image_url"]  # fmt: skip
    for index, (url, image) in enumerate(zip(urls, images)):
        if url.startswith("data:") and (served := server_load_image(url)).size != image.size:
            raise ValueError(f"image {index}: the server reads it as {served.width}x{served.height} px, this side as "
                             f"{image.width}x{image.height} px; their EXIF orientation rules differ")  # fmt: skip


def processor_inputs(processor, messages: list[dict], images: list | None = None):
    """What the model gets for this request: ``input_ids`` of shape ``(1, seq_len)``,
    ``pixel_values`` of shape ``(patches, 1176)`` and ``image_grid_thw`` of shape ``(images, 3)``.
    """
    images = request_images(messages) if images is None else images
    return processor(text=[served_prompt(processor, messages)], images=images or None, return_tensors="pt")


@dataclass
class TokenBridge:
    """One request seen from both sides: the local processor's count and the server's ``prompt_tokens``."""

    prompt: str
    local_tokens: int
    image_tokens: list[int]
    server_tokens: int | None = None
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height), upright

    @property
    def matches(self) -> bool:
        return self.server_tokens == self.local_tokens

    def __str__(self) -> str:
        images = " + ".join(str(n) for n in self.image_tokens) or "0"
        verdict = "no server answer given" if self.server_tokens is None else (
            f"{self.server_tokens}  ->  {'same' if self.matches else 'DIFFERENT'}")  # fmt: skip
        return (
            f"prompt the server sees (before each {IMAGE_PAD} is expanded):\n{self.prompt}\n"
            f"local processor: {self.local_tokens} tokens ({images} of them image tokens"
            f"{''.join(f', image {i}: {w}x{h} px upright' for i, (w, h) in enumerate(self.image_sizes))})\n"
            f"server prompt_tokens: {verdict}"
        )


def bridge(processor, messages: list[dict], answer: ChatAnswer | None = None) -> TokenBridge:
    """Count the request's prompt tokens with ``processor``, next to ``answer.prompt_tokens`` if given."""
    images = request_images(messages)
    check_orientation(messages, images)
    inputs = processor_inputs(processor, messages, images)
    merge = processor.image_processor.merge_size
    grids = inputs.get("image_grid_thw")
    image_tokens = [] if grids is None else [int(grid.prod()) // merge**2 for grid in grids]  # t*h*w / 4
    return TokenBridge(
        prompt=served_prompt(processor, messages),
        local_tokens=inputs["input_ids"].shape[1],
        image_tokens=image_tokens,
        server_tokens=None if answer is None else answer.prompt_tokens,
        image_sizes=[image.size for image in images],
    )


def where_it_looked(specimen, messages: list[dict], max_new_tokens: int = 4):
    """Replay a request locally and draw where the answer's tokens looked in its first image.

    The same processor inputs as ``bridge`` go through ``specimen.model`` while its
    decoder attention is recorded (``anatomy.decoder.generation``); returns a matplotlib Figure.
    """
    images = request_images(messages)
    if not images:
        raise ValueError("the request has no image_url item: there is nothing to look at")
    inputs = processor_inputs(specimen.processor, messages, images).to(specimen.device)
    prompt = Prompt(inputs, images, token_kinds(specimen.config, inputs["input_ids"]))
    return answer_attention_figure(specimen, prompt, max_new_tokens=max_new_tokens)
