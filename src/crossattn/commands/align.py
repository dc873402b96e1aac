"""`crossattn align`: word alignments of sentence pairs from a model's cross-attention.

Force-decodes each pair and prints one Pharaoh line per pair on stdout: ``i-j`` links with i the
source word and j the target word, 0-indexed.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from ..cli import CommandError, add_threads_argument, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory of crossattn train")
    parser.add_argument("--data", required=True, help="parallel text: 'source ||| target' or TSV")
    parser.add_argument("--skip-bad-lines", action="store_true",
                        help="print an empty line for a malformed or over-long pair (named on "
                        "stderr) instead of failing")  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="pairs force-decoded at once")  # fmt: skip
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ..align import extract_alignment
    from ..train import Encoded, attention_for_pairs, choose_threads
    from ._common import load_translator, read_pairs

    choose_threads(args.threads)

    tr = load_translator(args.model)
    with warnings.catch_warnings():  # the skipped lines are reported below, in one plain line
        warnings.filterwarnings("ignore", message=r"skipped \d+ bad line", category=UserWarning)
        data = read_pairs(args.data, skip_bad_lines=args.skip_bad_lines)
    # line -> "FILE:LINE: reason" of each skipped pair
    problems = dict(zip(data.skipped_lines, data.problems))
    max_source, max_target = tr.model.config.max_len, tr.model.config.max_len - 1
    pairs, kept = [], []
    for line, ex in zip(data.lines, data.examples):
        if len(ex.source) > max_source or len(ex.target) > max_target:
            problem = (
                f"{args.data}:{line}: {len(ex.source)} source / {len(ex.target)} target words; "
                f"the model takes at most {max_source} / {max_target}"
            )
            if not args.skip_bad_lines:
                raise CommandError(f"argument --data: {problem} (--skip-bad-lines skips it)")
            problems[line] = problem
            continue
        kept.append((line, ex))
        pairs.append(Encoded(tuple(tr.source_vocab.encode(ex.source)),
                             tuple(tr.target_vocab.encode(ex.target)), frozenset()))  # fmt: skip
    weights = attention_for_pairs(tr.model, pairs, batch_size=args.batch_size)
    # One output line per input line: a skipped pair gets an empty one, so the output still
    # lines up with the input (and with a gold file for `crossattn aer`).
    out = sys.stdout
    results = iter(zip(kept, weights))
    for line in range(1, len(kept) + len(problems) + 1):
        if line in problems:
            out.write("\n")
            continue
        (_, ex), w = next(results)
        links = extract_alignment(w, tr.extraction, len(ex.source), len(ex.target))
        out.write(" ".join(f"{i}-{j}" for i, j in sorted(links)) + "\n")
    if problems:
        shown = [problems[line] for line in sorted(problems)]
        listed = "; ".join(shown[:10]) + ("; ..." if len(shown) > 10 else "")
        print(
            f"crossattn align: skipped {len(shown)} pair(s); their output lines are empty: "
            f"{listed}",
            file=sys.stderr,
        )
    return 0
