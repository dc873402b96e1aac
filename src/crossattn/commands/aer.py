"""`crossattn aer GOLD HYP`: alignment error rate of a Pharaoh hypothesis against gold.

Prints exactly one line on stdout, ``AER 4.07 P 96.27 R 95.42`` (percentages, two decimals), or
the same as JSON with ``--json``. Links are pooled over the corpus (Och & Ney 2003); every link of
the hypothesis counts, sure or possible. Bad input (missing file, malformed line, different line
counts, two files without a line) prints ``crossattn aer: error: FILE:LINE: reason`` on stderr and
exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gold", help="gold alignments, Pharaoh: i-j sure, ipj possible")
    parser.add_argument("hypothesis", help="hypothesis alignments, Pharaoh, 0-indexed")
    parser.add_argument(
        "--gold-one-indexed",
        action="store_true",
        help="the gold counts words from 1 (as the shared gold sets do); the hypothesis from 0",
    )
    parser.add_argument("--reverse", action="store_true", help="swap i-j to j-i in the hypothesis")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _warn_if_one_indexed(gold: list, path: str) -> None:
    """A 0-indexed gold almost always links some word 0; a 1-indexed one never does."""
    links = [link for sure, possible in gold for link in sure | possible]
    if len(links) >= 20 and not any(i == 0 or j == 0 for i, j in links):
        print(
            f"crossattn aer: warning: {path} never uses index 0 in {len(links)} links; "
            "if it is 1-indexed, pass --gold-one-indexed",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    from ..align import aer, read_alignments
    from ..data.pharaoh import ParallelFormatError

    try:
        gold = read_alignments(args.gold, one_indexed=args.gold_one_indexed)
        hyp = read_alignments(args.hypothesis)
        if len(gold) != len(hyp):
            raise ParallelFormatError(
                args.hypothesis,
                None,
                f"has {len(hyp)} lines but the gold {args.gold} has {len(gold)}; "
                "they need one line per sentence pair",
            )
        if not gold:
            raise ParallelFormatError(
                args.gold,
                None,
                f"holds no alignment lines, nor does {args.hypothesis}: nothing to score; "
                "expected one Pharaoh line per sentence pair",
            )
    except ParallelFormatError as err:
        print(f"crossattn aer: error: {err}", file=sys.stderr)
        return 2
    if not args.gold_one_indexed:
        _warn_if_one_indexed(gold, args.gold)
    result = aer(gold, hyp, reverse=args.reverse)
    if args.json:
        print(
            json.dumps(
                {
                    "aer": round(100 * result.aer, 2),
                    "precision": round(100 * result.precision, 2),
                    "recall": round(100 * result.recall, 2),
                    "sentences": result.sentences,
                    "hypothesis_links": result.n_hypothesis,
                    "sure_links": result.n_sure,
                }
            )
        )
    else:
        print(result)
    return 0
