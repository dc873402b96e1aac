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
                        help="print an empty line for a malformed or over-long pair (named on "
                        "stderr) instead of failing")  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="pairs force-decoded at once")  # fmt: skip
    add_threads_argument(parser)
    add_compute_type_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ..models.translator import describe_unknown
    from ..train import choose_threads
    from ._common import load_translator, read_pairs

    choose_threads(args.threads)

    tr = load_translator(args.model, compute_type=args.compute_type)
    with warnings.catch_warnings():  # the skipped lines are reported below, in one plain line
        warnings.filterwarnings("ignore", message=r"skipped \d+ bad line", category=UserWarning)
        data = read_pairs(args.data, skip_bad_lines=args.skip_bad_lines)
    # line -> "FILE:LINE: reason" of each skipped pair
    problems = dict(zip(data.skipped_lines, data.problems))
    kept = []
    for line, ex in zip(data.lines, data.examples):
        reason = tr.too_long(ex.source, ex.target)  # subwords: a word may be several tokens
        if reason:
            problem = f"{args.data}:{line}: {reason}"
            if not args.skip_bad_lines:
                raise CommandError(f"argument --data: {problem} (--skip-bad-lines skips it)")
            problems[line] = problem
            continue
        kept.append(ex)
    aligned = tr.align_batch(
        [ex.source for ex in kept], [ex.target for ex in kept], batch_size=args.batch_size
    )  # fmt: skip  (links between words)
    # One output line per input line: a skipped pair gets an empty one, so the output still
    # lines up with the input (and with a gold file for `crossattn aer`).
    out = sys.stdout
    results = iter(aligned)
    for line in range(1, len(kept) + len(problems) + 1):
        if line in problems:
            out.write("\n")
            continue
        out.write(next(results).pharaoh() + "\n")
    if problems:
        shown = [problems[line] for line in sorted(problems)]
        listed = "; ".join(shown[:10]) + ("; ..." if len(shown) > 10 else "")
        print(
            f"crossattn align: skipped {len(shown)} pair(s); their output lines are empty: "
            f"{listed}",
            file=sys.stderr,
        )
    unknown = describe_unknown(aligned, unit="pair")
    if unknown:
        print(f"crossattn align: warning: {unknown}", file=sys.stderr)
    return 0
