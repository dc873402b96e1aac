"""`crossattn align`: word alignments of sentence pairs from a model's cross-attention.

Force-decodes each pair and prints one Pharaoh line per pair on stdout: ``i-j`` links with i the
source word and j the target word, 0-indexed.

``--extraction`` says how attention becomes links (`crossattn.align.spec`: the model's
extraction.json by default, ``default``, ``agreement``, or ``key=value`` overrides).
``--reverse-model`` adds a target-to-source model (by default MODEL/reverse when it exists, as
``crossattn train --both-directions`` writes it): the swapped pairs are aligned with it, its
links flipped, and the two directions combined by ``--symmetrize`` (`crossattn.align.symmetrize`).
See docs/alignment.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..cli import CommandError, add_threads_argument, positive_int
from ._common import REVERSE_DIR
from ._compute_type import add_compute_type_argument

#: default combination of two directions, chosen by measurement (docs/alignment.md)
DEFAULT_SYMMETRIZE = "grow-diag-final"
#: pairs the ``agreement`` extraction looks at (the first ones of --data)
AGREEMENT_PAIRS = 500


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..align.symmetrize import SYMMETRIZATIONS

    parser.add_argument("--model", required=True, help="model directory of crossattn train")
    parser.add_argument("--data", required=True, help="parallel text: 'source ||| target' or TSV")
    parser.add_argument("--extraction", default="model",
                        help="how attention becomes links: 'model' (the model's extraction.json, "
                        "the default), 'default', 'agreement' (chosen without gold by the "
                        "agreement of the two directions; needs a reverse model), optionally "
                        "followed by key=value overrides, e.g. 'shift=feed,method=bidirectional,"
                        "threshold=0.3,layers=-1' (layers/heads: ints joined by '+', or 'all')")  # fmt: skip
    parser.add_argument("--reverse-model",
                        help="target-to-source model directory to symmetrise with (default: "
                        f"MODEL/{REVERSE_DIR} if it exists; 'none' for one direction)")  # fmt: skip
    parser.add_argument("--symmetrize", choices=SYMMETRIZATIONS, default=None,
                        help="how the two directions are combined (needs a reverse model; "
                        f"default {DEFAULT_SYMMETRIZE})")  # fmt: skip
    parser.add_argument("--skip-bad-lines", action="store_true",
                        help="print an empty line for a malformed or over-long pair (named on "
                        "stderr) instead of failing")  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="pairs force-decoded at once")  # fmt: skip
    add_compute_type_argument(parser)
    add_threads_argument(parser)


def _reverse_path(args: argparse.Namespace) -> str | None:
    if args.reverse_model == "none":
        if args.symmetrize:
            raise CommandError(
                "argument --symmetrize: needs a reverse model, got --reverse-model none"
            )
        return None
    if args.reverse_model is not None:
        return args.reverse_model
    auto = os.path.join(args.model, REVERSE_DIR)
    if os.path.isfile(os.path.join(auto, "config.json")):
        return auto
    if args.symmetrize:
        raise CommandError(
            f"argument --symmetrize: needs --reverse-model DIR (a target-to-source model; "
            f"{auto!r} holds none: train with crossattn train --both-directions)"
        )
    return None


def _keep_pairs(args, data, translators) -> tuple[list, dict]:
    """The pairs every model can align, and line -> problem of the others."""
    problems = dict(zip(data.skipped_lines, data.problems))
    kept = []
    for line, ex in zip(data.lines, data.examples):
        reason = translators[0].too_long(ex.source, ex.target)  # subwords: maybe several tokens
        if not reason and len(translators) > 1:
            reason = translators[1].too_long(ex.target, ex.source)
            reason = f"reverse model: {reason}" if reason else ""
        if reason:
            problem = f"{args.data}:{line}: {reason}"
            if not args.skip_bad_lines:
                raise CommandError(f"argument --data: {problem} (--skip-bad-lines skips it)")
            problems[line] = problem
            continue
        kept.append(ex)
    return kept, problems


def _links(results, config, swap: bool) -> list[set]:
    """(source, target) word links of each result under ``config`` (None: as aligned)."""
    from ..align import extract_alignment
    from ..data.pharaoh import flip_links

    out = []
    for r in results:
        if config is None:
            links = set(r.alignment)
        else:
            ns, nt = len(r.source_tokens), len(r.target_tokens)
            links = extract_alignment(r.decoder_attention, config, ns, nt)
        out.append(flip_links(links) if swap else links)
    return out


def _choose_by_agreement(forward, backward):
    from ..align.agreement import select_by_agreement

    f, b = forward[:AGREEMENT_PAIRS], backward[:AGREEMENT_PAIRS]
    config = select_by_agreement(
        [r.decoder_attention for r in f], [r.decoder_attention for r in b],
        [len(r.source_tokens) for r in f], [len(r.target_tokens) for r in f],
    )  # fmt: skip
    print(f"crossattn align: extraction by agreement: {config.describe()}", file=sys.stderr)
    return config


def _align(args, translators, kept) -> tuple[list[set], list]:
    """Word links per kept pair (one direction, or two symmetrised), and the results of the
    forward model (then the reverse one)."""
    from ..align.spec import parse_extraction

    try:
        spec = parse_extraction(args.extraction)
    except ValueError as err:
        raise CommandError(f"argument --extraction: {err}") from err
    if spec.base == "agreement" and len(translators) < 2:
        raise CommandError(
            "argument --extraction: 'agreement' needs a reverse model (--reverse-model DIR, "
            "or a model trained with crossattn train --both-directions)"
        )
    for tr in translators:
        tr.extraction = spec.resolve(tr.extraction)
    sources, targets = [ex.source for ex in kept], [ex.target for ex in kept]
    size = args.batch_size
    forward = translators[0].align_batch(sources, targets, batch_size=size)
    if len(translators) == 1:
        return _links(forward, None, swap=False), forward
    backward = translators[1].align_batch(targets, sources, batch_size=size)
    config = _choose_by_agreement(forward, backward) if spec.base == "agreement" else None
    from ..align.symmetrize import symmetrize

    method = args.symmetrize or DEFAULT_SYMMETRIZE
    pairs = zip(_links(forward, config, swap=False), _links(backward, config, swap=True))
    return [symmetrize(f, b, method) for f, b in pairs], forward + backward


def run(args: argparse.Namespace) -> int:
    from ..align.spec import parse_extraction
    from ..data.pharaoh import format_pharaoh
    from ..models.translator import describe_unknown
    from ..training import choose_threads
    from ._common import load_translator, read_pairs

    try:  # a bad spec fails before any model is loaded
        parse_extraction(args.extraction)
    except ValueError as err:
        raise CommandError(f"argument --extraction: {err}") from err
    reverse = _reverse_path(args)
    choose_threads(args.threads)
    translators = [load_translator(args.model, compute_type=args.compute_type)]
    if reverse is not None:
        translators.append(
            load_translator(reverse, "--reverse-model", compute_type=args.compute_type)
        )
    with warnings.catch_warnings():  # the skipped lines are reported below, in one plain line
        warnings.filterwarnings("ignore", message=r"skipped \d+ bad line", category=UserWarning)
        data = read_pairs(args.data, skip_bad_lines=args.skip_bad_lines)
    kept, problems = _keep_pairs(args, data, translators)
    links, results = _align(args, translators, kept)
    # One output line per input line: a skipped pair gets an empty one, so the output still
    # lines up with the input (and with a gold file for `crossattn aer`).
    out = sys.stdout
    aligned = iter(links)
    for line in range(1, len(kept) + len(problems) + 1):
        out.write("\n" if line in problems else format_pharaoh(next(aligned)) + "\n")
    if problems:
        shown = [problems[line] for line in sorted(problems)]
        listed = "; ".join(shown[:10]) + ("; ..." if len(shown) > 10 else "")
        print(
            f"crossattn align: skipped {len(shown)} pair(s); their output lines are empty: "
            f"{listed}",
            file=sys.stderr,
        )
    unknown = describe_unknown(results[: len(kept)], unit="pair")
    if unknown:
        print(f"crossattn align: warning: {unknown}", file=sys.stderr)
    return 0
