"""`train`: what `crossattn train` runs, from the options and the corpus to a model directory.

The steps, each a function of its own: check the options and the directory
(`crossattn.training.rules`), read and split the pairs, make the tokenizers and the model config
(or read them back when resuming), encode the pairs, build the model and optimizer (loading the
checkpoint when resuming), write the directory's config and vocabularies, run the loop
(`crossattn.training.loop`), and finish with the dev evaluation, the extraction config and the
final save.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .._checks import positive_int
from ..models.checkpoint import (
    CONFIG_FILE,
    EXTRACTION_FILE,
    SOURCE_VOCAB_FILE,
    TARGET_VOCAB_FILE,
    read_config,
    write_json,
)
from ..models.seq2seq import UNK_ID, Seq2SeqConfig, Seq2SeqTransformer
from ..models.tokenizer import load_tokenizers, save_tokenizers, train_tokenizer
from ..models.vocab import Vocabulary
from .batching import Encoded, encode_examples, make_batches, pair_cost, split_dev
from .checkpoint import load_checkpoint
from .distributed import Dist, main_process
from .extraction import choose_extraction
from .loop import Run, log, make_optimizer, train_loop
from .losses import evaluate_loss
from .options import TrainOptions
from .rules import (
    check_out_dir,
    gold_links_problem,
    pairs_problem,
    raise_problem,
    resume_problem,
)
from .rundir import CHECKPOINT_FILE, finished, remove_model_files, remove_temporaries

OOV_WARN_RATE = 0.2  # resume warns when more tokens than this are unknown to the saved vocabularies


@dataclass
class TrainResult:
    """What `train` returns: the model directory and its last numbers."""

    out: Path
    steps: int
    seconds: float
    train_loss: float
    dev: dict[str, float]


def choose_threads(requested: int | None = None) -> int:
    """Set torch's CPU threads: ``requested``, else 1 when other processes already keep every
    core busy (the 1-minute load average is at least the core count less one half), else torch's
    default. Oversubscribed cores make multi-threaded kernels wait for each other: on a busy
    2-core machine a training step with 2 threads measured several times slower than with 1."""
    if requested is not None:
        torch.set_num_threads(positive_int(requested, "threads"))
    elif hasattr(os, "getloadavg") and torch.get_num_threads() > 1:
        cores = os.cpu_count() or 1
        if os.getloadavg()[0] >= cores - 0.5:
            torch.set_num_threads(1)
    return torch.get_num_threads()


def read_examples(opts: TrainOptions) -> list:
    """The `ParallelExample`s of ``opts.data`` (and ``opts.alignments``)."""
    from ..data.parallel import read_parallel

    data = read_parallel(
        opts.data, alignments=opts.alignments, one_indexed=opts.one_indexed,
        skip_bad_lines=opts.skip_bad_lines,
    )  # fmt: skip
    if getattr(data, "skipped", 0):
        log(f"skipped {data.skipped} malformed line(s) of {opts.data}")
    return list(data.examples)


@dataclass
class _Model:
    """The options as they take effect, the model config and the tokenizers of a run."""

    opts: TrainOptions
    config: Seq2SeqConfig
    tokenizers: tuple[Any, Any]  # (source, target) `Tokenizer`s
    where: str  # "" for a new model, " in 'out'" for a resumed one


def _new_model(opts: TrainOptions, sources: list, targets: list) -> _Model:
    """Tokenizers trained on the training pairs' ``sources`` and ``targets``, and the config."""
    kw = {"vocab_size": opts.vocab_size, "normalization": opts.normalization}
    src_tok = train_tokenizer(opts.tokenizer, sources, **kw)
    tgt_tok = train_tokenizer(opts.tokenizer, targets, **kw)
    return _Model(opts, opts.model_config(len(src_tok), len(tgt_tok)), (src_tok, tgt_tok), "")


def _saved_model(opts: TrainOptions) -> _Model:
    """The config and tokenizers saved in ``opts.out``; the model options set to the saved ones
    (`ValueError` when one was set to another value)."""
    out = Path(opts.out)
    config = read_config(out)
    raise_problem(resume_problem(opts, config))
    tokenizers = load_tokenizers(
        out, Vocabulary.load(out / SOURCE_VOCAB_FILE), Vocabulary.load(out / TARGET_VOCAB_FILE)
    )
    return _Model(opts.with_model(config), config, tokenizers, f" in {str(out)!r}")


def _unknown_rate(encoded: Sequence[Sequence[int]]) -> float:
    total = sum(len(ids) for ids in encoded)
    return sum(i == UNK_ID for ids in encoded for i in ids) / max(total, 1)


def _warn_unknown(train_set: list[Encoded], out: Path) -> None:
    """Warn when a resumed run's pairs are mostly unknown to the saved vocabularies."""
    src_rate = _unknown_rate([e.source for e in train_set])
    tgt_rate = _unknown_rate([e.target for e in train_set])
    if max(src_rate, tgt_rate) > OOV_WARN_RATE:
        warnings.warn(
            f"resume: {src_rate:.0%} of the source tokens and {tgt_rate:.0%} of the target "
            f"tokens of the training pairs are unknown to the vocabularies saved in "
            f"{str(out)!r} and become <unk>; is this the data the model was trained on? "
            "(a new vocabulary needs a new model: another out directory, without resume)",
            UserWarning,
            stacklevel=4,
        )


def _encode(m: _Model, train_examples: list, dev_examples: list) -> tuple[list, list, list]:
    """(training pairs, dev pairs, dev examples) as ids, the pairs too long for the model left
    out (`ValueError` when no training pair fits)."""
    train_set = encode_examples(train_examples, *m.tokenizers)
    dev_set = encode_examples(dev_examples, *m.tokenizers)
    if m.opts.resume and main_process():
        _warn_unknown(train_set, Path(m.opts.out))
    limit = m.config.max_len - 1  # room for BOS / EOS
    lengths = [max(len(e.source), len(e.target)) for e in train_set]
    what = f"the training data{m.where} ({len(train_set)} pairs)"
    raise_problem(pairs_problem(lengths, m.config.max_len, what))
    if max(lengths) > limit:
        too_long = sum(n > limit for n in lengths)
        log(f"leaving out {too_long} training pair(s) longer than max_len - 1 = {limit} tokens")
        train_set = [e for e, n in zip(train_set, lengths) if n <= limit]
    keep = [k for k, e in enumerate(dev_set) if max(len(e.source), len(e.target)) <= limit]
    return train_set, [dev_set[k] for k in keep], [dev_examples[k] for k in keep]


def _write_directory(m: _Model, out: Path) -> None:
    """Make ``out`` ready for the run (main process): the files of a replaced model and the
    leftovers of killed saves removed; the vocabularies, tokenizers (new models) and config."""
    if not m.opts.resume:
        remove_model_files(out)  # none, or the model that overwrite replaces
    remove_temporaries(out)  # left by a process killed while it saved
    out.mkdir(parents=True, exist_ok=True)
    if not m.opts.resume:
        src_tok, tgt_tok = m.tokenizers
        src_tok.vocab.save(out / SOURCE_VOCAB_FILE)
        tgt_tok.vocab.save(out / TARGET_VOCAB_FILE)
        save_tokenizers(out, src_tok, tgt_tok)
    write_json(out / CONFIG_FILE, {"model": m.config.to_dict(), "train": m.opts.record()})


def _check_call(opts: TrainOptions, examples: Sequence[Any] | None) -> None:
    """The checks before anything is read or written."""
    opts.validate()  # again: the options may have changed since they were made
    if opts.steps is None and opts.minutes is None:
        raise ValueError("give steps or minutes (or both) to bound the training")
    if main_process():  # the process that writes (torchrun: rank 0)
        check_out_dir(opts)
    if examples is None:
        raise_problem(gold_links_problem(opts.guided_alignment, opts.alignments))


def _examples(opts: TrainOptions, examples: Sequence[Any] | None) -> tuple[list, bool]:
    """The pairs to train on and whether they carry gold links."""
    examples = read_examples(opts) if examples is None else list(examples)
    if not examples:
        raise_problem(pairs_problem([], 0, repr(opts.data) if opts.data else "the examples"))
    with_align = any(ex.sure or ex.possible for ex in examples)
    if opts.guided_alignment and not with_align:
        raise ValueError(
            f"guided_alignment needs gold links, but none of the {len(examples)} sentence pairs "
            "has any (give alignments, or examples with sure / possible links)"
        )
    return examples, with_align


def _finish(run: Run, dev_examples: list, step: int, seconds: float, dev: dict) -> dict:
    """The end of a run (main process): the last dev evaluation, then the final save, with the
    extraction config chosen on the dev split. Returns the dev metrics."""
    run.model.eval()
    if run.dev_set:
        dev = evaluate_loss(run.model, run.dev_set, run.opts.batch_tokens, run.dist.device)
        log(
            f"step {step}: dev loss {dev['loss']:.3f} accuracy {dev['accuracy']:.3f} "
            f"({seconds:.0f} s of training)"
        )

    def write_extraction() -> None:
        extraction = choose_extraction(
            run.model, run.dev_set, dev_examples, run.with_align, tokenizers=run.tokenizers
        )
        write_json(run.out / EXTRACTION_FILE, extraction.to_dict())

    run.save(step, seconds, dev, finish=write_extraction)
    return dev


def _parameter_count(model: Seq2SeqTransformer) -> int:
    """Parameters, a tied output projection counted once."""
    tied = model.config.tie_embeddings
    return sum(p.numel() for p in model.parameters() if p is not model.output.weight or not tied)


def train(opts: TrainOptions, examples: Sequence[Any] | None = None) -> TrainResult:
    """Train a translator as `crossattn train` does and write its model directory.

    Args:
        opts: `TrainOptions`. With ``resume``, the model config, vocabularies and split come
            from ``opts.out`` and training continues from its saved step; ``steps`` is the total
            step count, ``minutes`` bounds this run's training loop. Model options left at their
            defaults take the checkpoint's values; one set to another value is a `ValueError`.
            Resuming on data whose words are mostly unknown to the saved vocabularies warns.
        examples: the `ParallelExample`s to train on in place of reading ``opts.data``. With
            ``guided_alignment``, their gold links (``sure`` / ``possible``) are the targets.

    Returns:
        `TrainResult`.

    Raises:
        ValueError / TypeError: bad options or data, before anything is written.
        FileExistsError: ``opts.out`` holds a model, and neither ``resume`` nor ``overwrite``.
        FileNotFoundError: ``resume``, but ``opts.out`` holds no checkpoint.
        CheckpointError: ``resume`` from a damaged checkpoint (a `ValueError`).
        TrainingInterrupted: Ctrl-C (SIGINT) in the training loop, after saving a checkpoint.
    """
    _check_call(opts, examples)
    t_start = time.perf_counter()
    out = Path(opts.out)
    examples, with_align = _examples(opts, examples)
    train_idx, dev_idx = split_dev(len(examples), opts.dev_size, opts.seed)
    if opts.resume:
        m = _saved_model(opts)
    else:
        sources = [examples[i].source for i in train_idx]
        m = _new_model(opts, sources, [examples[i].target for i in train_idx])
    # the options as they take effect: the default attention layer of a one-layer decoder is -1
    opts = m.opts = replace(m.opts, attention_layer=m.opts.attention_layer_for(m.config))
    raise_problem(opts.attention_problem(m.config, f"the model{m.where}"))
    dist = Dist()
    train_set, dev_set, dev_examples = _encode(
        m, [examples[i] for i in train_idx], [examples[i] for i in dev_idx]
    )
    torch.manual_seed(opts.seed)
    model = Seq2SeqTransformer(m.config).to(dist.device)
    optimizer = make_optimizer(model, opts)
    state: dict[str, Any] = {"step": 0, "seconds": 0.0}
    if opts.resume:
        state = load_checkpoint(out / CHECKPOINT_FILE, model, optimizer)
        if opts.steps is not None and state["step"] >= opts.steps and finished(out, state):
            if dist.main:
                log(f"{out} is at step {state['step']} of {opts.steps} already: nothing to do")
            dist.close()
            return TrainResult(
                out, 0, time.perf_counter() - t_start, math.nan, state.get("dev", {})
            )
        if dist.main:
            log(f"resuming {out} at step {state['step']}")
    if dist.main:
        _write_directory(m, out)
    batches = make_batches([pair_cost(e) for e in train_set], opts.batch_tokens)
    if dist.main:
        log(
            f"{len(train_set)} training pairs, {len(dev_set)} held out for dev, "
            f"{len(batches)} batches per epoch, vocab {len(m.tokenizers[0].vocab)}/"
            f"{len(m.tokenizers[1].vocab)}, {_parameter_count(model) / 1e6:.2f}M parameters, "
            f"{dist.world} process(es) on {dist.device}"
        )
    run = Run(model, optimizer, opts, dist, out, train_set, dev_set, batches, with_align,
              m.tokenizers)  # fmt: skip
    step, ema_loss, dev_metrics, loop_seconds = train_loop(run, state)
    if dist.main:
        seconds = float(state.get("seconds", 0.0)) + loop_seconds
        dev_metrics = _finish(run, dev_examples, step, seconds, dev_metrics)
    dist.barrier()
    dist.close()
    return TrainResult(
        out=out,
        steps=step - int(state["step"]),
        seconds=time.perf_counter() - t_start,
        train_loss=float("nan") if ema_loss is None else ema_loss,
        dev=dev_metrics,
    )
