"""Command line.

python -m anatomy dissect IMAGE [--model SOURCE] [--out DIR] [--text QUESTION] [--max-pixels N] [--budget-gib G]
python -m anatomy toy ensure|train|path|evaluate [--seed N] [--n N]
python -m anatomy patch|knockout|heads CLEAN CORRUPT --question Q --answers GOOD BAD --out DIR [--plan] ...
    (anatomy.causal.command; python -m anatomy patch -h)
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
    dissect.add_argument("--text", default=None,
                         help="the question (default: 'What colour is the cross?' on the toy, "
                              "else the reference request's)")
    dissect.add_argument("--max-pixels", type=int, default=None,
                         help="scale a larger picture down to this many pixels (default 1003520; 0: no cap)")
    dissect.add_argument("--budget-gib", type=float, default=None,
                         help="refuse a job estimated to hold more memory than this, in GiB (default 8)")
    commands.add_parser(
        "toy", help="train, locate or evaluate the toy model (python -m anatomy toy -h)", add_help=False
    )
    for verb, what in (("patch", "activation patching of two pictures over (site, cell group)"),
                       ("knockout", "answer -> image attention knocked out per decoder layer"),
                       ("heads", "one decoder attention head ablated at a time")):  # fmt: skip
        commands.add_parser(verb, help=f"{what} (python -m anatomy {verb} -h)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["toy"]:
        from anatomy.toy import main_toy

        return main_toy(argv[1:])
    if argv[:1] in (["patch"], ["knockout"], ["heads"]):
        from anatomy.causal.command import main as main_causal

        return main_causal(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "dissect":
        from anatomy.dissect import dissect

        try:
            limits = {"max_pixels": args.max_pixels or None} if args.max_pixels is not None else {}
            limits |= {"budget_gib": args.budget_gib} if args.budget_gib is not None else {}
            print(dissect(args.image, args.model, args.out, args.text, **limits))
        except (ValueError, FileNotFoundError, TypeError, MemoryError) as error:
            print(f"anatomy dissect: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
