"""Serving: the reference request's chat API, a local server for this package's model, and the bridge back to anatomy.

- ``payload``: the reference request's request (system + user message, ``image_url``/``video_url`` items)
  from local files, URLs or PIL images;
- ``client``: send it to any OpenAI-compatible server (``chat`` via the ``openai``
  client, ``post_chat`` via plain HTTP), with one clear error per failure;
- ``server``: ``LocalServer``, ``transformers serve`` on 127.0.0.1 on the CPU, always stopped;
- ``vllm``: the GPU command, in the reference request's form and the JSON form newer vLLM needs;
- ``bridge``: the prompt the server sees, its token count from the local processor, and
  ``where_it_looked``: the same request replayed locally, the answer's attention over the image.

Run ``python -m anatomy.serving`` to serve the default model until Ctrl-C.
"""

from anatomy.serving.bridge import (
    TokenBridge,
    bridge,
    processor_inputs,
    processor_messages,
    served_prompt,
    where_it_looked,
)
from anatomy.serving.client import (
    ChatAnswer,
    ServerDownError,
    ServerResponseError,
    ServerTimeoutError,
    ServingError,
    answer_of,
    chat,
    post_chat,
)
from anatomy.serving.payload import (
    DEFAULT_SYSTEM,
    REFERENCE_IMAGE_URL,
    REFERENCE_MODEL,
    REFERENCE_QUESTION,
    chat_messages,
    chat_payload,
    image_url,
    reference_payload,
    sample_image,
    video_url,
)
from anatomy.serving.server import LocalServer, free_port, save_for_serving
from anatomy.serving.vllm import vllm_command

__all__ = [
    "REFERENCE_IMAGE_URL",
    "REFERENCE_MODEL",
    "REFERENCE_QUESTION",
    "DEFAULT_SYSTEM",
    "ChatAnswer",
    "LocalServer",
    "ServerDownError",
    "ServerResponseError",
    "ServerTimeoutError",
    "ServingError",
    "TokenBridge",
    "answer_of",
    "bridge",
    "chat",
    "chat_messages",
    "chat_payload",
    "free_port",
    "image_url",
    "post_chat",
    "processor_inputs",
    "processor_messages",
    "sample_image",
    "save_for_serving",
    "reference_payload",
    "served_prompt",
    "video_url",
    "vllm_command",
    "where_it_looked",
]
