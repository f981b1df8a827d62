"""``python -m anatomy.serving [--source tiny] [--port 8000]``: serve a model locally until Ctrl-C.

Prints the address, the model name to send, a curl request to try, and the
vLLM command that serves the real model on a GPU.
"""

from __future__ import annotations

import argparse
import json
import signal

from anatomy.serving.server import LocalServer
from anatomy.serving.vllm import vllm_command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser("python -m anatomy.serving", description="Serve a model on 127.0.0.1.")
    parser.add_argument("--source", default="tiny", help="what anatomy.load takes: tiny, toy or a checkpoint dir")
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill stops the server too
    with LocalServer(args.source, port=args.port) as server:
        print(f"serving {server.model!r} at {server.base_url} (pid {server.pid}); Ctrl-C stops it")
        body = json.dumps({"model": server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16})
        print(f"try: curl {server.base_url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'")
        print(f"on a GPU, the real model: {vllm_command()}")
        try:
            signal.pause()
        except KeyboardInterrupt:
            print("stopping")


if __name__ == "__main__":
    main()
