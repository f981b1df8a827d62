"""Command line.

python -m anatomy dissect IMAGE [--model SOURCE] [--out DIR] [--text QUESTION]
python -m anatomy toy ensure|train|path|evaluate [--seed N] [--n N]
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anatomy", description="Dissect Qwen2.5-VL component by component.")
    commands = parser.add_subparsers(dest="command", required=True)
    dissect = commands.add_parser("dissect", help="anatomy of one forward pass on an image")
    dissect.add_argument("image", help="path of the image to feed the model")
    dissect.add_argument("--model", default="toy", help="'toy' (default), 'tiny', a hub id or a directory")
    dissect.add_argument("--out", default=None, help="directory for the figures (PNG)")
    dissect.add_argument("--text", default=None, help="the question (default: the reference request's)")
    commands.add_parser(
        "toy", help="train, locate or evaluate the toy model (python -m anatomy toy -h)", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["toy"]:
        from anatomy.toy import main_toy

        return main_toy(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "dissect":
        from anatomy.dissect import dissect
        from anatomy.inputs import REFERENCE_QUESTION

        try:
            print(dissect(args.image, args.model, args.out, args.text or REFERENCE_QUESTION))
        except (ValueError, FileNotFoundError, TypeError) as error:
            print(f"anatomy dissect: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
