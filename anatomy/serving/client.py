"""Send a chat request to any OpenAI-compatible server: vLLM, ``transformers serve``, ...

Two ways, one result and one set of errors:

- ``chat``: through the official ``openai`` client, as an application would;
- ``post_chat``: plain HTTP with the standard library, exactly what the reference request's curl sends.

Every failure is one of three ``ServingError``s with a message that says what
to do: ``ServerDownError`` (nothing listens there), ``ServerResponseError``
(the server answered 4xx/5xx; ``.status`` and ``.detail`` carry its words), and
``ServerTimeoutError`` (it accepted the request but did not answer in time).

Both are bounded by default: ``timeout=60`` s, and ``chat`` asks for at most
``DEFAULT_MAX_TOKENS`` new tokens (a model that never ends its turn, like the toy,
would otherwise generate until the server's own limit).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import openai

from anatomy.serving.payload import chat_payload

DEFAULT_MAX_TOKENS = 128


class ServingError(RuntimeError):
    """A chat request that got no answer; the subclass says why."""


class ServerDownError(ServingError):
    """Nothing accepts connections at the address."""


class ServerTimeoutError(ServingError):
    """The server took the request but sent no answer within the timeout."""


class ServerResponseError(ServingError):
    """The server answered with an HTTP error (4xx: the request, 5xx: the server)."""

    def __init__(self, base_url: str, status: int, detail: str):
        self.status, self.detail = status, detail
        side = "the request was refused" if status < 500 else "the server failed"
        super().__init__(f"{base_url} answered HTTP {status} ({side}): {detail}")


@dataclass
class ChatAnswer:
    """What came back: the text, the token usage the server counted, and how long it took.

    ``usage`` is ``{"prompt_tokens": ..., "completion_tokens": ..., "total_tokens": ...}``.
    """

    text: str
    usage: dict
    model: str
    finish_reason: str
    seconds: float

    @property
    def prompt_tokens(self) -> int:
        return self.usage["prompt_tokens"]


def _base_url(base_url: str) -> str:
    """``http://host:port`` from that or ``http://host:port/v1`` (what the OpenAI client wants)."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    base_url = base_url.rstrip("/")
    return base_url.removesuffix("/v1")


def _down(base_url: str) -> ServerDownError:
    return ServerDownError(
        f"no server answers at {base_url}. Start one (`python -m anatomy.serving` for the local "
        f"model, or the vLLM command of `vllm_command()` on a GPU), or check the address and port."
    )


def _timed_out(base_url: str, timeout: float) -> ServerTimeoutError:
    return ServerTimeoutError(
        f"{base_url} took the request but sent no answer within {timeout} s. A large model or a CPU "
        f"needs longer: pass a larger timeout=, or a smaller max_tokens=."
    )


def _detail(body) -> str:
    """The server's own words from an error body: FastAPI's ``detail``, vLLM's ``message``, OpenAI's ``error``."""
    if isinstance(body, dict):
        error = body.get("error")
        error = error.get("message") if isinstance(error, dict) else error
        found = body.get("detail") or body.get("message") or error
        return str(found if found is not None else body)
    return str(body)


def chat(
    base_url: str,
    messages: list[dict],
    model: str,
    *,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    timeout: float = 60.0,
) -> ChatAnswer:
    """Send ``messages`` to ``model`` at ``base_url`` with the official ``openai`` client.

    >>> chat("http://127.0.0.1:8000", chat_messages(REFERENCE_QUESTION, images=[sample_image()]), "anatomy-tiny")
    ChatAnswer(text='...', usage={'prompt_tokens': 69, 'completion_tokens': ..., ...}, ...)
    """
    base_url = _base_url(base_url)
    payload = chat_payload(model, messages, max_tokens)  # the same checks as plain HTTP
    start = time.perf_counter()
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="EMPTY", timeout=timeout, max_retries=0) as client:
        try:
            completion = client.chat.completions.create(**payload)
        except openai.APITimeoutError:  # a subclass of APIConnectionError: caught first
            raise _timed_out(base_url, timeout) from None
        except openai.APIConnectionError:
            raise _down(base_url) from None
        except openai.APIStatusError as error:
            raise ServerResponseError(base_url, error.status_code, _detail(error.body)) from None
    return answer_of(completion.model_dump(), time.perf_counter() - start)


def post_chat(base_url: str, payload: dict, *, timeout: float = 60.0) -> dict:
    """``POST {base_url}/v1/chat/completions`` with ``payload`` as JSON, as curl does; the parsed reply.

    ``payload`` goes out unchecked, so a malformed one reaches the server (and comes back as its 4xx).
    """
    base_url = _base_url(base_url)
    request = urllib.request.Request(
        f"{base_url}/v1/chat/completions",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise ServerResponseError(base_url, error.code, _detail(_read_body(error))) from None
    except (TimeoutError, urllib.error.URLError) as error:
        if isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError):
            raise _timed_out(base_url, timeout) from None
        raise _down(base_url) from None


def _read_body(error: urllib.error.HTTPError):
    text = error.read().decode(errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # e.g. Starlette's plain "Internal Server Error"


def answer_of(reply: dict, seconds: float = float("nan")) -> ChatAnswer:
    """A ``ChatAnswer`` from the JSON of a chat completion (what ``post_chat`` returns)."""
    choice = reply["choices"][0]
    return ChatAnswer(
        text=choice["message"]["content"] or "",
        usage={key: reply["usage"][key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")},
        model=reply["model"],
        finish_reason=choice["finish_reason"],
        seconds=seconds,
    )
