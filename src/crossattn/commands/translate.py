"""`crossattn translate`: translate sentences and print their word alignment.

For each sentence (arguments, or stdin lines when none are given) it prints the translation, then
the alignment as Pharaoh links ``i-j`` (source word i, target word j, 0-indexed) and as word pairs.
``--json`` prints one JSON object per sentence instead.
"""

from __future__ import annotations

import argparse
import sys

from ..cli import CommandError, add_threads_argument, finite_float, positive_int
from ._compute_type import add_compute_type_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory of crossattn train")
    parser.add_argument("sentences", nargs="*", help="sentences to translate (default: stdin)")
    parser.add_argument("--beam", type=positive_int, default=4, help="beam size (1: greedy)")
    parser.add_argument("--length-penalty", type=finite_float, default=0.6)
    parser.add_argument("--json", action="store_true", help="one JSON object per sentence")
    add_threads_argument(parser)
    add_compute_type_argument(parser)


def run(args: argparse.Namespace) -> int:
    import json

    from ..train import choose_threads
    from ._common import load_translator

    choose_threads(args.threads)

    for k, sentence in enumerate(args.sentences, 1):
        if not sentence.strip(" "):
            raise CommandError(
                f"argument sentences: sentence {k} is empty ({sentence!r}); expected at least "
                "one word"
            )
    tr = load_translator(args.model, compute_type=args.compute_type)
    if args.sentences:
        numbered = [(f"sentence {k}", s) for k, s in enumerate(args.sentences, 1)]
    else:
        numbered = [(f"stdin line {k}", line.rstrip("\n"))
                    for k, line in enumerate(sys.stdin, 1) if line.strip()]  # fmt: skip
    limit = tr.model.config.max_len
    for where, sentence in numbered:
        n = len(tr.tokenize(sentence))
        if not 1 <= n <= limit:
            raise CommandError(
                f"{where} has {n} words ({sentence[:60]!r}); this model takes 1 to {limit} words"
            )
    sentences = [sentence for _, sentence in numbered]
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
