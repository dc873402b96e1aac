"""`crossattn translate`: translate sentences and print their word alignment.

For each sentence (arguments, or stdin lines when none are given) it prints the translation, then
the alignment as Pharaoh links ``i-j`` (source word i, target word j, 0-indexed) and as word pairs.
``--json`` prints one JSON object per sentence instead.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory of crossattn train")
    parser.add_argument("sentences", nargs="*", help="sentences to translate (default: stdin)")
    parser.add_argument("--beam", type=int, default=4, help="beam size (1: greedy)")
    parser.add_argument("--length-penalty", type=float, default=0.6)
    parser.add_argument("--json", action="store_true", help="one JSON object per sentence")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: 1 when the cores are already busy, else all)",
    )


def run(args: argparse.Namespace) -> int:
    import json

    from ..models import Translator
    from ..train import choose_threads

    choose_threads(args.threads)

    if args.beam < 1:
        raise SystemExit(f"crossattn translate: --beam must be >= 1, got {args.beam}")
    tr = Translator.load(args.model)
    sentences = args.sentences or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for sentence in sentences:
        r = tr.translate(sentence, beam=args.beam, length_penalty=args.length_penalty)
        if args.json:
            print(json.dumps({"source": list(r.source_tokens), "target": list(r.target_tokens),
                              "alignment": [list(link) for link in r.alignment],
                              "score": r.score}, ensure_ascii=False))  # fmt: skip
            continue
        print(r.translation)
        print(r.pharaoh())
        pairs = ", ".join(f"{r.source_tokens[i]}={r.target_tokens[j]}" for i, j in r.alignment)
        print(f"  ({pairs})")
    return 0
