"""`crossattn train`: train an encoder-decoder translator on parallel text.

Every option is checked before the corpus is read or anything is written: the ranges while
parsing, then the model shape (``--d-model`` divisible by ``--heads``, ``--attention-layer`` and
``--attention-head`` within the model), the paths and the corpus itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

from ..cli import (
    CommandError,
    add_threads_argument,
    float_range,
    int_at_least,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from ._common import REVERSE_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training import TrainOptions

    d = TrainOptions(data="", out="")
    p = parser
    p.add_argument("--data", required=True,
                   help="parallel text: 'source ||| target' or TSV lines (required)")  # fmt: skip
    p.add_argument("--alignments",
                   help="Pharaoh gold alignments of --data, i-j sure, ipj possible (default: none)")  # fmt: skip
    p.add_argument("--one-indexed", action="store_true",
                   help="the alignments count from 1 (default: from 0)")  # fmt: skip
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip malformed lines and say how many (default: stop at the first)")  # fmt: skip
    p.add_argument("--out", required=True,
                   help="model directory to write (required); one that holds a model needs "
                   "--resume or --overwrite")  # fmt: skip
    p.add_argument("--steps", type=positive_int,
                   help="total optimisation steps of the run, resumed parts included (default: "
                   "none; without --steps and --minutes, 4 minutes)")  # fmt: skip
    p.add_argument("--minutes", type=positive_float,
                   help="wall-clock bound of this run's training loop (default: none; 4 without "
                   "--steps)")  # fmt: skip
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from the checkpoint in --out (default: off)")  # fmt: skip
    again.add_argument("--overwrite", action="store_true",
                       help="replace the model in --out (default: off, refuse)")  # fmt: skip
    p.add_argument("--stop-after", type=positive_int,
                   help="end this run after N steps, schedule kept (default: none)")  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    p.add_argument("--both-directions", action="store_true",
                   help="also train a target-to-source model into OUT/reverse (for crossattn "
                   "align --symmetrize); --minutes is split in half between the two, --steps "
                   "applies to each (default: off)")  # fmt: skip
    _add_token_arguments(p.add_argument_group("tokens"), d)
    _add_model_and_training_arguments(p, d)


def _add_token_arguments(g: argparse._ArgumentGroup, d: Any) -> None:
    g.add_argument("--tokenizer", choices=("word", "bpe", "unigram"), default=d.tokenizer,
                   help="model tokens: whole words, or subwords trained on --data by the "
                   f"'tokenizers' library (default: {d.tokenizer})")  # fmt: skip
    g.add_argument("--vocab-size", type=int_at_least(5), default=None,
                   help="tokens per side, specials included (default: every word for word, "
                   "8000 for bpe and unigram)")  # fmt: skip
    g.add_argument("--normalization", choices=("nfkc", "nfc", "none"), default=None,
                   help="Unicode normalisation of every word (default: none for word, nfkc "
                   "for bpe and unigram)")  # fmt: skip


# (flag, type, help) of the options of a group, in order: the default is TrainOptions'; a type
# None is a switch, whose help says its default
_MODEL_ARGUMENTS = (
    ("--d-model", positive_int, "model width, a multiple of --heads"),
    ("--heads", positive_int, "attention heads"),
    ("--encoder-layers", positive_int, "encoder layers"),
    ("--decoder-layers", positive_int, "decoder layers"),
    ("--dim-ff", positive_int, "feed-forward width"),
    ("--dropout", float_range(0.0, 1.0, high_open=True), "dropout probability"),
    ("--post-norm", None, "post-norm layers (default: pre-norm)"),
    ("--max-len", int_at_least(2), "longest sentence, in tokens, BOS or EOS included"),
    ("--untied", None, "do not tie target embedding and output (default: tied)"),
)
_OPTIMISATION_ARGUMENTS = (
    ("--batch-tokens", positive_int, "source + target tokens per batch"),
    ("--lr", positive_float, "peak learning rate of AdamW"),
    ("--warmup", non_negative_int, "linear warm-up steps"),
    ("--weight-decay", non_negative_float, "AdamW weight decay, not on embeddings, norms or biases"),
    ("--clip", positive_float, "gradient-norm clipping"),
    ("--label-smoothing", float_range(0.0, 1.0, high_open=True),
     "label smoothing of the cross-entropy"),
)  # fmt: skip
_REGULARISERS = (
    ("--entropy-weight", non_negative_float,
     "weight of the attention-entropy regulariser, sharper maps"),
    ("--coverage-weight", non_negative_float,
     "weight of the coverage regulariser, every source word attended once"),
)  # fmt: skip
_EVALUATION_ARGUMENTS = (
    ("--dev-size", non_negative_int, "pairs held out for dev, at most a tenth"),
    ("--eval-seconds", non_negative_float, "seconds between dev evaluations"),
    ("--save-seconds", non_negative_float, "seconds between checkpoints, 0: every step"),
    ("--no-progress", None, "no progress bar (default: a bar on stderr)"),
)


def _add_table(g: argparse._ArgumentGroup, d: Any, table: tuple) -> None:
    """The options of ``table`` (see `_MODEL_ARGUMENTS`), with the defaults of ``d``."""
    for name, kind, text in table:
        if kind is None:
            g.add_argument(name, action="store_true", help=text)
            continue
        default = getattr(d, name[2:].replace("-", "_"))
        g.add_argument(name, type=kind, default=default, help=f"{text} (default: %(default)s)")


def _add_model_and_training_arguments(p: argparse.ArgumentParser, d: Any) -> None:
    _add_table(p.add_argument_group("model"), d, _MODEL_ARGUMENTS)
    _add_table(p.add_argument_group("optimisation"), d, _OPTIMISATION_ARGUMENTS)
    g = p.add_argument_group("attention losses")
    g.add_argument("--guided-alignment", action="store_true",
                   help="supervise one cross-attention head with --alignments, as Garg et al. "
                   "2019 (default: off)")  # fmt: skip
    g.add_argument("--guided-weight", type=non_negative_float, default=d.guided_weight,
                   help="weight of the guided-alignment loss (default: %(default)s)")  # fmt: skip
    g.add_argument("--attention-layer", type=int, default=None,
                   help="decoder layer of the attention losses, in -L..L-1 for L decoder layers "
                   f"(negative: from the top) (default: {d.attention_layer}, or -1 with one "
                   "layer)")  # fmt: skip
    g.add_argument("--attention-head", type=int, default=d.attention_head,
                   help="head of the guided-alignment loss, in -H..H-1 for H heads "
                   "(default: %(default)s)")  # fmt: skip
    _add_table(g, d, _REGULARISERS)
    _add_table(p.add_argument_group("evaluation and checkpoints"), d, _EVALUATION_ARGUMENTS)
    add_threads_argument(p)


def options_from_args(args: argparse.Namespace):
    from ..training import TrainOptions

    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)
          if hasattr(args, f.name)}  # fmt: skip
    kw["norm_first"] = not args.post_norm
    kw["tie_embeddings"] = not args.untied
    kw["progress"] = not args.no_progress
    if args.steps is None and args.minutes is None:
        kw["minutes"] = 4.0
    if kw.get("attention_layer") is None:
        kw.pop("attention_layer", None)
    return TrainOptions(**kw)


def flag(option: str) -> str:
    """The command-line flag of a `TrainOptions` field: ``max_len`` -> ``--max-len``."""
    return "--" + option.replace("_", "-")


def _refuse(problem: Any) -> None:
    """Raise a training rule's `Problem` (when there is one) as a `CommandError`."""
    if problem is not None:
        raise CommandError(f"argument {flag(problem.option)}: {problem.message}")


def _model_shape(args: argparse.Namespace) -> tuple[str, dict]:
    """Where the model shape comes from (the options, or the checkpoint when resuming), and it."""
    from ..models.checkpoint import CONFIG_FILE, read_config

    saved = os.path.join(args.out, CONFIG_FILE)
    if args.resume and os.path.isfile(saved):
        try:
            config = read_config(args.out)
            shape = {
                k: getattr(config, k) for k in ("d_model", "heads", "decoder_layers", "max_len")
            }
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CommandError(
                f"argument --resume: cannot read the model shape from {saved!r} "
                f"({type(err).__name__}: {err}); expected the checkpoint of crossattn train"
            ) from err
        return f"the checkpoint in {args.out!r}", shape
    shape = {"d_model": args.d_model, "heads": args.heads, "decoder_layers": args.decoder_layers,
             "max_len": args.max_len}  # fmt: skip
    return "the model", shape


def check_args(args: argparse.Namespace) -> None:
    """Cross-option checks, before any file is read or written: `CommandError` on the first.
    The rules are the library's (`crossattn.training.rules`), naming the flags."""
    from ..training.rules import (
        attention_problem,
        gold_links_problem,
        heads_problem,
        resolve_attention_layer,
    )

    _refuse(heads_problem(args.d_model, args.heads, flag))
    _refuse(gold_links_problem(args.guided_alignment, args.alignments, flag))
    source, shape = _model_shape(args)
    layers, heads = shape["decoder_layers"], shape["heads"]
    args.attention_layer = resolve_attention_layer(args.attention_layer, layers)
    _refuse(attention_problem(args.attention_layer, args.attention_head, layers, heads, source,
                              flag))  # fmt: skip
    from ._common import check_input_file

    for option, path in (("--data", args.data), ("--alignments", args.alignments)):
        if path is not None:
            check_input_file(path, option, "a text file")
    _check_out(args)


def _check_out(args: argparse.Namespace) -> None:
    """--out fits --resume / --overwrite, holds a readable checkpoint to resume from, and can
    be written."""
    from ..training import CHECKPOINT_FILE
    from ..training.distributed import main_process
    from ..training.rules import out_dir_problem
    from ._common import check_output_dir

    if not main_process():  # under torchrun, rank 0 checks and writes
        return
    check_output_dir(args.out)
    _refuse(out_dir_problem(args.out, args.resume, args.overwrite, flag))
    if args.resume:
        from ..training.checkpoint import CheckpointError, read_checkpoint_state

        try:
            read_checkpoint_state(os.path.join(args.out, CHECKPOINT_FILE))
        except (CheckpointError, OSError) as err:
            raise CommandError(
                f"argument --resume: cannot resume: {err}; start a new run with --overwrite"
            ) from err
    check_writable_dir(args.out)


def check_writable_dir(path: str, option: str = "--out") -> None:
    """A directory can be made at ``path`` (or written in, when it exists): tried by creating
    it and a file in it, then removing what was created. `CommandError` when it cannot."""
    import tempfile

    target = os.path.abspath(path)
    missing = []
    while not os.path.exists(target):
        missing.append(target)
        target = os.path.dirname(target)
    made = []
    doing = f"cannot create the directory {path!r}"
    try:
        for directory in reversed(missing):
            os.mkdir(directory)
            made.append(directory)
        doing = f"cannot write into {path!r}"
        fd, probe = tempfile.mkstemp(prefix=".crossattn-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CommandError(
            f"argument {option}: {doing} ({err.strerror or err}); choose a directory you can "
            "write to"
        ) from err
    finally:
        for directory in reversed(made):
            os.rmdir(directory)


def read_examples(args: argparse.Namespace, opts) -> list:
    """The corpus of `opts`; malformed or unusable text is a `CommandError`."""
    from ..data.parallel import ParallelFormatError
    from ..training import read_examples
    from ..training.rules import pairs_problem

    try:
        examples = read_examples(opts)
    except ParallelFormatError as err:
        option = (
            "--alignments" if args.alignments and err.path == str(args.alignments) else "--data"
        )
        raise CommandError(f"argument {option}: {err}") from err
    _, shape = _model_shape(args)
    lengths = [max(len(e.source), len(e.target)) for e in examples]
    _refuse(pairs_problem(lengths, shape["max_len"], repr(args.data), "words", flag))
    return examples


def _check_resume(args: argparse.Namespace, opts: Any) -> None:
    """A resumed run keeps the saved model: options that set another shape are refused."""
    from ..models.checkpoint import CONFIG_FILE, read_config
    from ..training.rules import resume_problem

    if not args.resume:
        return
    try:
        config = read_config(args.out)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CommandError(
            f"argument --resume: cannot read the saved model from "
            f"{os.path.join(args.out, CONFIG_FILE)!r} ({type(err).__name__}: {err}); expected "
            "the checkpoint of crossattn train"
        ) from err
    try:
        problem = resume_problem(opts, config, flag)
    except ValueError as err:
        raise CommandError(f"argument --resume: {err}") from err
    _refuse(problem)


def run(args: argparse.Namespace) -> int:
    from ..training import CheckpointError, choose_threads, train
    from ..training.distributed import main_process

    try:
        check_args(args)
        choose_threads(args.threads)
        opts = options_from_args(args)
        _check_resume(args, opts)
        examples = read_examples(args, opts)
        for opts_k, examples_k in _directions(args, opts, examples):
            result = train(opts_k, examples_k)
            if main_process():
                print(json.dumps({"out": str(result.out), "steps": result.steps,
                                  "seconds": round(result.seconds, 1), "dev": result.dev}))  # fmt: skip
    except KeyboardInterrupt as err:
        _say(interrupted_message(args, getattr(err, "step", None)))
        return 130
    except CheckpointError as err:
        raise CommandError(f"argument --resume: cannot resume: {err}") from err
    except OSError as err:
        # a disk that fills up, a folder made read-only meanwhile, a model file removed
        raise CommandError(f"argument --out: {args.out!r}: {err}") from err
    return 0


def _say(message: str) -> None:
    import sys

    from ..training.distributed import main_process

    if main_process():
        print(message, file=sys.stderr, flush=True)


def interrupted_message(args: argparse.Namespace, step: int | None) -> str:
    """One line for Ctrl-C: which checkpoint ``args.out`` keeps and how to go on."""
    from ..training import CHECKPOINT_FILE, model_files
    from ..training.checkpoint import read_checkpoint_state

    try:
        kept = int(read_checkpoint_state(os.path.join(args.out, CHECKPOINT_FILE))["step"])
    except Exception:  # none, or unreadable: nothing to resume from
        kept = None
    where = "" if step is None else f" at step {step}"
    if kept is None:
        return (
            f"crossattn train: interrupted{where} before the first checkpoint: nothing to "
            f"resume in {args.out!r}; run the command again"
            + (" with --overwrite" if model_files(args.out) and not args.overwrite else "")
        )
    how = "the same command again" if args.resume else "the same command with --resume"
    if args.overwrite:
        how += " in place of --overwrite"
    return (
        f"crossattn train: interrupted{where}: kept the checkpoint of step {kept} in "
        f"{args.out!r}; to continue, run {how}"
    )


def _directions(args: argparse.Namespace, opts: Any, examples: list) -> list[tuple[Any, list]]:
    """(options, examples) of each model to train: source->target, and with
    ``--both-directions`` target->source into OUT/reverse, the minutes split in half."""
    if not args.both_directions:
        return [(opts, examples)]
    swapped = [e.swapped() for e in examples]
    half = None if opts.minutes is None else opts.minutes / 2
    forward = dataclasses.replace(opts, minutes=half)
    reverse = dataclasses.replace(opts, minutes=half, out=os.path.join(opts.out, REVERSE_DIR))
    return [(forward, examples), (reverse, swapped)]
