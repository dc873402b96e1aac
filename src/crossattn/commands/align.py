"""`crossattn align`: word alignments of sentence pairs from a model's cross-attention.

Force-decodes each pair and prints one Pharaoh line per pair on stdout: ``i-j`` links with i the
source word and j the target word, 0-indexed.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from ..cli import CommandError, add_threads_argument, positive_int
from ._compute_type import add_compute_type_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory of crossattn train")
    parser.add_argument("--data", required=True, help="parallel text: 'source ||| target' or TSV")
    parser.add_argument("--skip-bad-lines", action="store_true",
                        help="print an empty line for malformed pairs instead of failing")  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="pairs force-decoded at once (default 64)")  # fmt: skip
    add_threads_argument(parser)
    add_compute_type_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ..align import extract_alignment
    from ..train import Encoded, attention_for_pairs, choose_threads
    from ._common import load_translator, read_pairs

    choose_threads(args.threads)

    tr = load_translator(args.model, compute_type=args.compute_type)
    with warnings.catch_warnings():  # the skipped lines are reported below, in one plain line
        warnings.filterwarnings("ignore", message=r".*skipped \d+ bad line", category=UserWarning)
        data = read_pairs(args.data, skip_bad_lines=args.skip_bad_lines)
    limit = tr.model.config.max_len - 1
    pairs = []
    for k, ex in enumerate(data.examples):
        if len(ex.source) > tr.model.config.max_len or len(ex.target) > limit:
            raise CommandError(
                f"argument --data: {args.data}: pair {k + 1} has {len(ex.source)}/"
                f"{len(ex.target)} source/target words; the model takes at most "
                f"{tr.model.config.max_len}/{limit}"
            )
        pairs.append(Encoded(tuple(tr.source_vocab.encode(ex.source)),
                             tuple(tr.target_vocab.encode(ex.target)), frozenset()))  # fmt: skip
    weights = attention_for_pairs(tr.model, pairs, batch_size=args.batch_size)
    # One output line per input line: a skipped (malformed) pair gets an empty one, so the
    # output still lines up with the input (and with a gold file for `crossattn aer`).
    out = sys.stdout
    skipped = set(data.skipped_lines)
    results = iter(zip(data.examples, weights))
    for line in range(1, len(data.examples) + len(skipped) + 1):
        if line in skipped:
            out.write("\n")
            continue
        ex, w = next(results)
        links = extract_alignment(w, tr.extraction, len(ex.source), len(ex.target))
        out.write(" ".join(f"{i}-{j}" for i, j in sorted(links)) + "\n")
    if skipped:
        lines = ", ".join(map(str, sorted(skipped)[:10])) + (", ..." if len(skipped) > 10 else "")
        print(
            f"crossattn align: skipped {len(skipped)} malformed pair(s) (line {lines}); their "
            "output lines are empty",
            file=sys.stderr,
        )
    return 0
