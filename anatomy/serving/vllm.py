"""The vLLM command that serves Qwen2.5-VL on a GPU, in the reference request's form and today's.

The reference request (vLLM 0.7) wrote ``--limit-mm-per-prompt image=5,video=5``; newer vLLM
reads that flag as JSON, ``'{"image":5,"video":5}'``, and takes
``--mm-processor-kwargs '{"max_pixels": ...}'`` to cap the tokens one image may
cost (the released processor allows 12,845,056 pixels = 16,384 tokens):

``vllm_command()`` gives (one line)::

    vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 --host 127.0.0.1 --dtype bfloat16
      --limit-mm-per-prompt '{"image":5,"video":5}' --mm-processor-kwargs '{"max_pixels":1003520}'

The client of ``anatomy.serving.client`` talks to it unchanged: ``chat("http://HOST:8000",
messages, "Qwen/Qwen2.5-VL-7B-Instruct")``.
"""

from __future__ import annotations

import json
import shlex

from anatomy.inputs import DEFAULT_MAX_PIXELS  # 1,003,520 px: at most 1280 image tokens, Qwen's suggested cap
from anatomy.processor import check_max_pixels
from anatomy.serving.payload import REFERENCE_MODEL

STYLES = ("json", "reference")


def _limits(images: int, videos: int, style: str) -> str:
    """``image=5,video=5`` (reference) or ``{"image":5,"video":5}`` (JSON, newer vLLM)."""
    if style == "reference":
        return f"image={images},video={videos}"
    return json.dumps({"image": images, "video": videos}, separators=(",", ":"))


def vllm_command(
    model: str = REFERENCE_MODEL,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    dtype: str = "bfloat16",
    images: int = 5,
    videos: int = 5,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    style: str = "json",
) -> str:
    """The ``vllm serve`` command line for ``model``.

    ``style="reference"`` writes the limits as the reference request did (and adds no ``max_pixels``,
    which the reference request did not have); ``vllm_command(host="0.0.0.0", style="reference")`` is the
    reference request's command, character for character. ``host`` defaults to 127.0.0.1: 0.0.0.0
    accepts requests from any machine that can reach this one.
    """
    if style not in STYLES:
        raise ValueError(f"style={style!r}; expected one of {STYLES}")
    if not (isinstance(port, int) and 0 < port < 65536):
        raise ValueError(f"port must be an int in 1..65535, got {port!r}")
    check_max_pixels(max_pixels)
    words = ["vllm", "serve", model, "--port", str(port), "--host", host, "--dtype", dtype,
             "--limit-mm-per-prompt", _limits(images, videos, style)]  # fmt: skip
    if style == "json" and max_pixels is not None:
        words += ["--mm-processor-kwargs", json.dumps({"max_pixels": max_pixels}, separators=(",", ":"))]
    return shlex.join(words)
