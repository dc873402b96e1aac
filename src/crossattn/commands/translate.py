"""`crossattn translate`: translate sentences and print their word alignment.

Input: the sentence arguments, else the lines of ``--input FILE``, else of stdin. A line ends at
``"\\n"`` only (a ``"\\r"`` before it is removed, no other character splits a line) and must be
UTF-8; an empty line gives an empty result, so the output lines up with the input.

Output, one result per input line, on stdout or in ``--output FILE`` (written atomically):

* the human format (stdout): for each input line a block of three lines per hypothesis: the
  translation, the alignment as Pharaoh links ``i-j`` (source word i, target word j, 0-indexed)
  and the linked word pairs; an empty input line gives one block ``""``, ``""``, ``"  ()"``;
* ``--json``: one JSON object per line, ``{"source", "target", "alignment", "score"}`` (token
  lists, the alignment as a Pharaoh string or, with ``--alignment-format pairs``, a list of
  ``[i, j]``; the score is null for an empty line), and with ``--n-best N`` > 1 also ``"n_best"``:
  the N best hypotheses, best first, each ``{"target", "alignment", "score"}``;
* ``--output FILE`` without ``--json``: one translation per line, the n-best ones separated by
  tabs.

Warnings and summaries go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from ..cli import CommandError, add_threads_argument, finite_float, positive_int
from ._compute_type import add_compute_type_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory of crossattn train")
    parser.add_argument("sentences", nargs="*",
                        help="sentences to translate (default: the lines of --input or stdin)")  # fmt: skip
    parser.add_argument("--input", metavar="FILE",
                        help="translate the lines of FILE (default: stdin)")  # fmt: skip
    parser.add_argument("--output", metavar="FILE",
                        help="write one result per input line to FILE, atomically: the "
                        "translations, or JSON with --json (default: stdout)")  # fmt: skip
    parser.add_argument("--beam", type=positive_int, default=4, help="beam size (1: greedy)")
    parser.add_argument("--length-penalty", type=finite_float, default=0.6,
                        help="GNMT length-penalty alpha of beam search")  # fmt: skip
    parser.add_argument("--n-best", type=positive_int, default=1, metavar="N",
                        help="hypotheses per sentence, best first (at most --beam)")  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                        help="sentences translated at once")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="one JSON object per input line")
    parser.add_argument("--alignment-format", choices=("pharaoh", "pairs"), default="pharaoh",
                        help="alignment in --json: a Pharaoh string '0-0 1-2' (as the server "
                        "answers) or a list of [i, j] pairs")  # fmt: skip
    add_threads_argument(parser)
    add_compute_type_argument(parser)


_INPUT_FILE = "a UTF-8 text file, one sentence a line"


def _input_lines(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(what to call a line in messages, the input lines)."""
    from ..cli import input_errors
    from ..data.parallel import decode_lines, strip_line_end

    if args.sentences:
        if args.input is not None:
            raise CommandError(
                "argument --input: give sentences as arguments or --input FILE, not both"
            )
        for k, sentence in enumerate(args.sentences, 1):
            if not sentence.strip(" "):
                raise CommandError(
                    f"argument sentences: sentence {k} is empty ({sentence!r}); expected at "
                    "least one word"
                )
        return "sentence", [strip_line_end(s) for s in args.sentences]
    if args.input is not None:
        from ._common import check_input_file

        check_input_file(args.input, "--input", _INPUT_FILE)
        try:
            with open(args.input, "rb") as f:
                data = f.read()
        except OSError as err:
            raise CommandError(
                f"argument --input: cannot read {args.input!r} ({err.strerror or err}); "
                f"expected {_INPUT_FILE}"
            ) from err
        with input_errors("argument --input"):
            return f"{args.input} line", decode_lines(data, args.input)
    try:
        return "stdin line", decode_lines(sys.stdin.buffer.read(), "stdin")
    except ValueError as err:  # a line that is not UTF-8, named "stdin:LINE"
        raise CommandError(f"{err}; expected UTF-8 text") from err


def _check_lengths(tr: Any, where: str, lines: Sequence[str]) -> None:
    limit = tr.model.config.max_len
    for k, line in enumerate(lines, 1):
        words = tr.tokenize(line)
        if len(words) > limit:
            raise CommandError(
                f"{where} {k} has {len(words)} words ({line[:60]!r}); this model takes 1 to "
                f"{limit} words"
            )
        reason = tr.too_long(words)  # subwords: a word may be several tokens
        if reason:
            raise CommandError(f"{where} {k} ({line[:60]!r}): {reason}")


def _warn_unknown(results: Sequence[Any]) -> None:
    from ..models.translator import describe_unknown

    unknown = describe_unknown(results)
    if unknown:
        print(f"crossattn translate: warning: {unknown}", file=sys.stderr)


def _results(tr: Any, lines: Sequence[str], args: argparse.Namespace) -> Iterator[list[Any]]:
    """For each input line, its hypotheses, best first (none for an empty line); the non-empty
    lines are translated `--batch-size` at a time."""
    todo = [k for k, line in enumerate(lines) if tr.tokenize(line)]
    done: dict[int, list[Any]] = {}
    position = 0
    for start in range(0, len(todo), args.batch_size):
        batch = todo[start : start + args.batch_size]
        hyps = tr.translate_batch([lines[k] for k in batch], beam=args.beam,
                                  length_penalty=args.length_penalty, n_best=args.n_best)  # fmt: skip
        done.update(zip(batch, hyps))
        limit = todo[start + args.batch_size] if start + args.batch_size < len(todo) else len(lines)
        while position < limit:  # every line before the next batch is ready
            yield done.pop(position, [])
            position += 1
    while position < len(lines):  # no non-empty line at all
        yield done.pop(position, [])
        position += 1


def _json_text(obj: Any) -> str:
    """One JSON line; line breaks that `str.splitlines` splits at are escaped as well."""
    text = json.dumps(obj, ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")


def _format(hyps: list[Any], args: argparse.Namespace) -> str:
    """The output of one input line (its hypotheses, none when it is empty), with its final
    newline."""
    from ..data.parallel import alignment_as

    source = list(hyps[0].source_tokens) if hyps else []

    def entry(r: Any) -> dict[str, Any]:
        return {"target": list(r.target_tokens),
                "alignment": alignment_as(r.alignment, args.alignment_format), "score": r.score}  # fmt: skip

    if args.json:
        best = entry(hyps[0]) if hyps else {"target": [], "score": None,
                                            "alignment": alignment_as([], args.alignment_format)}  # fmt: skip
        row = {"source": source, "target": best["target"], "alignment": best["alignment"],
               "score": best["score"]}  # fmt: skip
        if args.n_best > 1:
            row["n_best"] = [entry(r) for r in hyps]
        return _json_text(row) + "\n"
    if args.output is not None:
        return "\t".join(r.translation for r in hyps) + "\n"
    blocks = []
    for r in hyps or [None]:
        if r is None:
            blocks.append("\n\n  ()\n")
            continue
        pairs = ", ".join(f"{r.source_tokens[i]}={r.target_tokens[j]}" for i, j in r.alignment)
        blocks.append(f"{r.translation}\n{r.pharaoh()}\n  ({pairs})\n")
    return "".join(blocks)


def _write(
    tr: Any, lines: Sequence[str], args: argparse.Namespace, out: TextIO, best: list[Any]
) -> int:
    count = 0
    for hyps in _results(tr, lines, args):
        best.extend(hyps[:1])
        out.write(_format(hyps, args))
        out.flush()
        count += 1
    return count


def run(args: argparse.Namespace) -> int:
    from ..training import choose_threads
    from ._common import check_output_file, load_translator

    choose_threads(args.threads)
    if args.n_best > args.beam:
        raise CommandError(
            f"argument --n-best: got {args.n_best}, but --beam is {args.beam}; expected at most "
            "the beam size (raise --beam)"
        )
    if args.output is not None:
        check_output_file(args.output, "--output")
    where, lines = _input_lines(args)
    tr = load_translator(args.model, compute_type=args.compute_type)
    _check_lengths(tr, where, lines)
    best: list[Any] = []  # the best hypothesis of each non-empty line, for the warning below
    if args.output is None:
        _write(tr, lines, args, sys.stdout, best)
        _warn_unknown(best)
        return 0
    tmp = os.path.join(
        os.path.dirname(args.output) or ".", f".{os.path.basename(args.output)}.tmp{os.getpid()}"
    )
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            count = _write(tr, lines, args, f, best)
        os.replace(tmp, args.output)
    except OSError as err:
        raise CommandError(f"argument --output: cannot write {args.output!r}: {err}") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    empty = sum(1 for line in lines if not tr.tokenize(line))
    print(f"crossattn translate: wrote {count} result(s) ({empty} for empty lines) to "
          f"{args.output}", file=sys.stderr)  # fmt: skip
    _warn_unknown(best)
    return 0
