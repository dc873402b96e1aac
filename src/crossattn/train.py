"""Training of `Seq2SeqTransformer` translators: data, batches, losses, loop, checkpoints.

`train(TrainOptions(...))` is what `crossattn train` runs. The model directory it writes:

    config.json              model config (Seq2SeqConfig) and the training options
    model.safetensors        weights
    source_vocab.json        source tokens: words, or subwords (`Vocabulary`)
    target_vocab.json        target tokens
    tokenizer.json           subword tokenizers (absent for --tokenizer word without normalisation;
                             see `crossattn.models.tokenizer`)
    extraction.json          how `crossattn align` turns cross-attention into word links
    checkpoint.safetensors   what --resume reads: weights, AdamW moments and step, in one file
    train_state.json         the last save's step, elapsed seconds, dev metrics (for people)

Every file is written atomically: to a temporary name, flushed, then renamed over the old one.
A save writes the checkpoint first (it is the one consistent unit `resume` reads, see
`crossattn.checkpoint`), then ``model.safetensors`` and ``train_state.json`` for the readers
of the directory; a process killed between the two leaves a model one save behind its
checkpoint, which the next save (or the resumed run) brings level.

Distributed data parallel: under ``torchrun --nproc-per-node N``, each step's batch (the same
batch that a single process would use) is split by rows over the N processes; each process
normalises its loss by the token count of the whole batch and the gradients are summed with
``all_reduce``, so the update equals the single-process one up to floating-point summation order.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import operator
import os
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import CheckpointError as CheckpointError  # re-exported: raised by train
from .checkpoint import atomic_write as _atomic
from .checkpoint import load_checkpoint, save_checkpoint, temporaries, write_json
from .models.decoding import force_decode_attention
from .models.seq2seq import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Seq2SeqConfig, Seq2SeqTransformer
from .models.tokenizer import (
    KINDS,
    NORMALIZATIONS,
    TOKENIZER_FILE,
    Tokenizer,
    load_tokenizers,
    resume_conflicts,
    save_tokenizers,
    subword_links,
    train_tokenizer,
)
from .models.vocab import Vocabulary

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SOURCE_VOCAB_FILE = "source_vocab.json"
TARGET_VOCAB_FILE = "target_vocab.json"
EXTRACTION_FILE = "extraction.json"
STATE_FILE = "train_state.json"
CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass
class TrainOptions:
    """Everything `crossattn train` takes; the defaults suit ~20k pairs of up to ~25 words.

    Model: d_model, heads, encoder_layers, decoder_layers, dim_ff, dropout, norm_first, max_len,
    tie_embeddings (see `Seq2SeqConfig`). Optimisation: AdamW with ``lr`` peak, linear warm-up
    over ``warmup`` steps then cosine decay to ``lr * min_lr_ratio`` at the end of the run (the
    end is ``steps`` or ``minutes``, whichever comes first), gradient clipping at ``clip``,
    label smoothing. ``batch_tokens`` bounds source + target tokens per batch. ``stop_after``
    ends this run after that many steps without changing the schedule (a later ``resume``
    continues exactly as if the run had not stopped).

    Tokens: ``tokenizer`` ``"word"`` (one token per word, the default), ``"bpe"`` or
    ``"unigram"`` (subwords trained on the training pairs, `crossattn.models.tokenizer`) with
    ``vocab_size`` tokens per side (None: every word, or 8000 subwords) and Unicode
    ``normalization`` (None: ``"none"`` for words, ``"nfkc"`` for subwords).

    Model directory: ``out`` that already holds a model is refused unless ``resume`` (continue
    from its checkpoint; ``steps`` is the total of the run, so resuming a finished run does
    nothing) or ``overwrite`` (replace it). A checkpoint is saved every ``save_seconds`` and at
    the end of the run.

    Attention losses (on the cross-attention of decoder layer ``attention_layer``, negative
    indices from the top): ``guided_weight`` times the guided-alignment cross-entropy of head
    ``attention_head`` against the gold links (Garg et al. 2019; needs alignments),
    ``entropy_weight`` times the mean entropy of its rows (all heads), ``coverage_weight`` times
    the mean squared difference between 1 and the attention each source word receives.
    ``attention_layer`` must lie in -L..L-1 for L decoder layers when an attention loss is on (the
    default -2 means the only layer of a one-layer decoder), ``attention_head`` in -H..H-1 for H
    heads with ``guided_alignment``; `train` checks both against the model before writing.

    Every option is checked when the options are made (and again by `train`, so later changes
    are checked too): a wrong type is a `TypeError`, a value out of range a `ValueError`, both
    naming the option. ``eval_seconds`` and ``save_seconds`` may be ``math.inf`` (only at the end).
    """

    data: str
    out: str
    alignments: str | None = None
    one_indexed: bool = False
    skip_bad_lines: bool = False
    steps: int | None = None
    minutes: float | None = None
    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = None
    seed: int = 0
    # tokens: see crossattn.models.tokenizer (vocab_size None: every word, or 8000 subwords;
    # normalization None: "none" for word, "nfkc" for bpe and unigram)
    tokenizer: str = "word"
    vocab_size: int | None = None
    normalization: str | None = None
    # model
    d_model: int = 128
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    dim_ff: int = 256
    dropout: float = 0.0
    norm_first: bool = True
    max_len: int = 128
    tie_embeddings: bool = True
    # optimisation
    batch_tokens: int = 1500
    lr: float = 3e-3
    warmup: int = 50
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    clip: float = 1.0
    label_smoothing: float = 0.1
    # attention losses
    guided_alignment: bool = False
    guided_weight: float = 1.0
    attention_layer: int = -2
    attention_head: int = 0
    entropy_weight: float = 0.0
    coverage_weight: float = 0.0
    # held-out split, evaluation, saving
    dev_size: int = 500
    eval_seconds: float = 60.0
    save_seconds: float = 120.0
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every option's type and range: `TypeError` / `ValueError` naming the option."""
        for name in ("data", "out", "alignments"):
            val = getattr(self, name)
            if val is None and name == "alignments":
                continue
            if not isinstance(val, (str, os.PathLike)):
                raise TypeError(
                    f"TrainOptions.{name} must be a path (str or os.PathLike), got "
                    f"{type(val).__name__}"
                )
            setattr(self, name, os.fspath(val))
        for name in ("one_indexed", "skip_bad_lines", "resume", "overwrite", "norm_first",
                     "tie_embeddings", "guided_alignment", "progress"):  # fmt: skip
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"TrainOptions.{name} must be a bool, got {getattr(self, name)!r}")
        _check_tokenizer_options(self)
        if self.resume and self.overwrite:
            raise ValueError(
                "TrainOptions.resume and TrainOptions.overwrite exclude each other: resume "
                "continues the model in out, overwrite replaces it"
            )
        if not isinstance(self.extra, dict):
            raise TypeError(f"TrainOptions.extra must be a dict, got {type(self.extra).__name__}")
        ints = {  # name: (lowest value, None allowed)
            "steps": (1, True), "stop_after": (1, True), "seed": (None, False),
            "d_model": (1, False), "heads": (1, False), "encoder_layers": (1, False),
            "decoder_layers": (1, False), "dim_ff": (1, False), "max_len": (2, False),
            "batch_tokens": (1, False), "warmup": (0, False), "dev_size": (0, False),
            "attention_layer": (None, False), "attention_head": (None, False),
        }  # fmt: skip
        for name, (low, optional) in ints.items():
            val = getattr(self, name)
            if val is None and optional:
                continue
            try:
                if isinstance(val, bool):
                    raise TypeError
                val = operator.index(val)
            except TypeError:
                raise TypeError(
                    f"TrainOptions.{name} must be an int{' or None' if optional else ''}, "
                    f"got {val!r}"
                ) from None
            setattr(self, name, val)
            if low is not None and val < low:
                raise ValueError(f"TrainOptions.{name} must be >= {low}, got {val}")
        floats = {  # name: (range as text, check, None allowed)
            "minutes": ("a finite number > 0", lambda v: 0 < v < math.inf, True),
            "dropout": ("in [0, 1)", lambda v: 0 <= v < 1, False),
            "lr": ("a finite number > 0", lambda v: 0 < v < math.inf, False),
            "min_lr_ratio": ("in [0, 1]", lambda v: 0 <= v <= 1, False),
            "weight_decay": ("a finite number >= 0", lambda v: 0 <= v < math.inf, False),
            "clip": ("a finite number > 0 (the largest gradient norm)",
                     lambda v: 0 < v < math.inf, False),
            "label_smoothing": ("in [0, 1)", lambda v: 0 <= v < 1, False),
            "guided_weight": ("a finite number >= 0", lambda v: 0 <= v < math.inf, False),
            "entropy_weight": ("a finite number >= 0", lambda v: 0 <= v < math.inf, False),
            "coverage_weight": ("a finite number >= 0", lambda v: 0 <= v < math.inf, False),
            "eval_seconds": ("a number >= 0 (or math.inf)", lambda v: v >= 0, False),
            "save_seconds": ("a number >= 0 (or math.inf)", lambda v: v >= 0, False),
        }  # fmt: skip
        for name, (expected, ok, optional) in floats.items():
            val = getattr(self, name)
            if val is None and optional:
                continue
            if isinstance(val, bool) or not isinstance(val, numbers.Real):
                raise TypeError(
                    f"TrainOptions.{name} must be a number{' or None' if optional else ''}, "
                    f"got {val!r}"
                )
            val = float(val)
            if not ok(val):  # NaN fails every check
                raise ValueError(f"TrainOptions.{name} must be {expected}, got {val!r}")
            setattr(self, name, val)
        if self.d_model % self.heads:
            raise ValueError(
                f"TrainOptions.d_model={self.d_model} must be divisible by heads={self.heads}"
            )

    def model_config(self, source_vocab: int, target_vocab: int) -> Seq2SeqConfig:
        return Seq2SeqConfig(
            source_vocab_size=source_vocab,
            target_vocab_size=target_vocab,
            d_model=self.d_model,
            heads=self.heads,
            encoder_layers=self.encoder_layers,
            decoder_layers=self.decoder_layers,
            dim_ff=self.dim_ff,
            dropout=self.dropout,
            norm_first=self.norm_first,
            max_len=self.max_len,
            tie_embeddings=self.tie_embeddings,
        )


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
        if requested < 1:
            raise ValueError(f"threads must be >= 1, got {requested}")
        torch.set_num_threads(requested)
    elif hasattr(os, "getloadavg") and torch.get_num_threads() > 1:
        cores = os.cpu_count() or 1
        if os.getloadavg()[0] >= cores - 0.5:
            torch.set_num_threads(1)
    return torch.get_num_threads()


# --------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Encoded:
    """A sentence pair as ids, with its gold links (0-indexed source i, target j)."""

    source: tuple[int, ...]
    target: tuple[int, ...]
    links: frozenset[tuple[int, int]]


def encode_examples(examples: Sequence[Any], source: Tokenizer, target: Tokenizer) -> list[Encoded]:
    """`ParallelExample`s as token ids, with their gold links (sure and possible) on tokens."""
    src = source.encode_batch([ex.source for ex in examples])
    tgt = target.encode_batch([ex.target for ex in examples])
    out = []
    for ex, s, t in zip(examples, src, tgt):
        links = frozenset(ex.sure) | frozenset(ex.possible)
        if not source.one_token_per_word or not target.one_token_per_word:
            links = subword_links(links, s.word_of, t.word_of)
        out.append(Encoded(s.ids, t.ids, links))
    return out


def split_dev(n: int, dev_size: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, dev) of n examples: a seeded random ``dev_size`` (at most n // 10) held out."""
    if dev_size < 0:
        raise ValueError(f"dev_size must be >= 0, got {dev_size}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(dev_size, n // 10)
    return sorted(order[k:]), sorted(order[:k])


def make_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group example indices of similar length into batches of at most ``batch_tokens``.

    ``lengths[i]`` is the padded cost of example i (source + target tokens). The grouping is
    deterministic; shuffle the batch order per epoch.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, current, longest = [], [], 0
    for i in order:
        longest_if = max(longest, lengths[i])
        if current and longest_if * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest_if = [], lengths[i]
        current.append(i)
        longest = longest_if
    if current:
        batches.append(current)
    return batches


@dataclass
class Batch:
    """Padded tensors of a batch.

    source (B, S) long, source_mask (B, S) bool (True = valid), target_in (B, T) long (BOS y1 ..),
    target_out (B, T) long (y1 .. EOS, PAD elsewhere), align (B, T, S) float gold attention
    (rows sum to 1 where the target word has links, else 0) or None.
    """

    source: Tensor
    source_mask: Tensor
    target_in: Tensor
    target_out: Tensor
    align: Tensor | None

    def rows(self, index: slice) -> Batch:
        return Batch(
            self.source[index], self.source_mask[index], self.target_in[index],
            self.target_out[index], None if self.align is None else self.align[index],
        )  # fmt: skip


def collate(examples: Sequence[Encoded], with_align: bool) -> Batch:
    b = len(examples)
    s = max(len(e.source) for e in examples)
    t = max(len(e.target) for e in examples) + 1
    source = torch.full((b, s), PAD_ID, dtype=torch.long)
    target_in = torch.full((b, t), PAD_ID, dtype=torch.long)
    target_out = torch.full((b, t), PAD_ID, dtype=torch.long)
    align = torch.zeros(b, t, s) if with_align else None
    for r, e in enumerate(examples):
        source[r, : len(e.source)] = torch.tensor(e.source)
        target_in[r, 0] = BOS_ID
        target_in[r, 1 : len(e.target) + 1] = torch.tensor(e.target, dtype=torch.long)
        target_out[r, : len(e.target)] = torch.tensor(e.target, dtype=torch.long)
        target_out[r, len(e.target)] = EOS_ID
        if align is not None:
            for i, j in e.links:  # row j produces target word j
                align[r, j, i] = 1.0
    if align is not None:
        align = align / align.sum(-1, keepdim=True).clamp_min(1.0)
    return Batch(source, source != PAD_ID, target_in, target_out, align)


# --------------------------------------------------------------------------------------- losses
@dataclass
class LossParts:
    """Summed (not averaged) loss terms of a batch slice and their counts."""

    total: Tensor
    nll_sum: float
    tokens: int
    correct: int


def batch_loss(
    model: Seq2SeqTransformer,
    batch: Batch,
    opts: TrainOptions,
    norm: dict[str, float],
) -> LossParts:
    """Loss of a batch slice, each term divided by its count over the whole batch (``norm``).

    ``norm`` holds ``tokens`` (target tokens incl. EOS), ``align_rows`` (target positions with
    gold links) and ``source_tokens``, all counted over the full batch (every process).
    """
    want = _wants_attention(opts)
    if want:
        _check_attention_indices(opts, model.config)
    layer = opts.attention_layer % model.config.decoder_layers
    out = model(
        batch.source, batch.source_mask, batch.target_in, attention_layers=[layer] if want else ()
    )
    logits = out.logits.float()  # (B, T, V)
    valid = batch.target_out != PAD_ID
    ce = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), batch.target_out, ignore_index=PAD_ID,
        label_smoothing=opts.label_smoothing, reduction="sum",
    )  # fmt: skip
    total = ce / norm["tokens"]
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), batch.target_out, ignore_index=PAD_ID, reduction="sum"
        )
        correct = int(((logits.argmax(-1) == batch.target_out) & valid).sum())
    if want:
        weights = out.cross_weights[layer]  # (B, H, T, S)
        if opts.guided_alignment and batch.align is not None and norm["align_rows"] > 0:
            head = weights[:, opts.attention_head]  # (B, T, S)
            guided = -(batch.align * torch.log(head.clamp_min(1e-9))).sum()
            total = total + opts.guided_weight * guided / norm["align_rows"]
        rows = valid[:, None, :, None]  # (B, 1, T, 1)
        if opts.entropy_weight > 0:
            ent = -(weights * torch.log(weights.clamp_min(1e-9))).sum(-1, keepdim=True)
            ent = (ent * rows).sum() / weights.shape[1]
            total = total + opts.entropy_weight * ent / norm["tokens"]
        if opts.coverage_weight > 0:
            coverage = (weights * rows).sum(2)  # (B, H, S): attention each source word receives
            miss = ((coverage - 1.0) ** 2 * batch.source_mask[:, None]).sum() / weights.shape[1]
            total = total + opts.coverage_weight * miss / norm["source_tokens"]
    return LossParts(total, float(nll), int(valid.sum()), correct)


def _wants_attention(opts: TrainOptions) -> bool:
    return opts.guided_alignment or opts.entropy_weight > 0 or opts.coverage_weight > 0


def _check_tokenizer_options(opts: TrainOptions) -> None:
    for name, choices in (("tokenizer", KINDS), ("normalization", NORMALIZATIONS)):
        val = getattr(opts, name)
        if not (val is None and name == "normalization") and val not in choices:
            raise ValueError(
                f"TrainOptions.{name} must be one of {', '.join(choices)}, got {val!r}"
            )
    size = opts.vocab_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral)):
        raise TypeError(f"TrainOptions.vocab_size must be an int or None, got {size!r}")
    if size is not None:
        size = opts.vocab_size = operator.index(size)  # numpy integers too
    if size is not None and size < 5:
        raise ValueError(
            f"TrainOptions.vocab_size must be >= 5 (4 specials and a token), got {size}"
        )


def _check_attention_indices(opts: TrainOptions, config: Seq2SeqConfig, where: str = "") -> None:
    """`ValueError` unless the attention losses' layer (and the guided head) are in the model."""
    layers, heads = config.decoder_layers, config.heads
    layer = opts.attention_layer
    if layers == 1 and layer == TrainOptions.attention_layer:
        layer = -1  # the default (the second layer from the top) means the only one
    if _wants_attention(opts) and not -layers <= layer < layers:
        raise ValueError(
            f"TrainOptions.attention_layer={opts.attention_layer} is out of range: the model"
            f"{where} has {layers} decoder layer(s); expected {-layers}..{layers - 1} "
            "(negative: from the top)"
        )
    if opts.guided_alignment and not -heads <= opts.attention_head < heads:
        raise ValueError(
            f"TrainOptions.attention_head={opts.attention_head} is out of range: the model"
            f"{where} has {heads} heads; expected {-heads}..{heads - 1}"
        )


_MODEL_FIELDS = ("d_model", "heads", "encoder_layers", "decoder_layers", "dim_ff", "dropout",
                 "norm_first", "max_len", "tie_embeddings")  # fmt: skip
OOV_WARN_RATE = 0.2  # resume warns when more tokens than this are unknown to the saved vocabularies


def _resume_conflicts(opts: TrainOptions, saved: Seq2SeqConfig) -> list[str]:
    """Model options set to something else than both their default and the checkpoint's value."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainOptions)}
    return [
        f"{name} {getattr(saved, name)!r} -> {getattr(opts, name)!r}"
        for name in _MODEL_FIELDS
        if getattr(opts, name) != getattr(saved, name) and getattr(opts, name) != defaults[name]
    ]


def _unknown_rate(encoded: Sequence[Sequence[int]]) -> float:
    total = sum(len(ids) for ids in encoded)
    return sum(i == UNK_ID for ids in encoded for i in ids) / max(total, 1)


def batch_norm(batch: Batch) -> dict[str, float]:
    align_rows = 0.0 if batch.align is None else float((batch.align.sum(-1) > 0).sum())
    return {
        "tokens": float((batch.target_out != PAD_ID).sum()),
        "align_rows": align_rows,
        "source_tokens": float(batch.source_mask.sum()),
    }


# --------------------------------------------------------------------------------------- files
def save_model(out: Path, model: Seq2SeqTransformer, step: int | None = None) -> None:
    """Write ``model.safetensors`` into ``out`` atomically (``step``: kept in its metadata)."""
    from safetensors.torch import save_model as st_save

    metadata = None if step is None else {"step": str(step)}
    _atomic(out / WEIGHTS_FILE, lambda p: st_save(model, str(p), metadata=metadata))


def load_model(directory: str | os.PathLike) -> tuple[Seq2SeqTransformer, Vocabulary, Vocabulary]:
    """Load a model directory written by `train`: (model in eval mode, source vocab, target vocab)."""
    from safetensors.torch import load_model as st_load

    d = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE, SOURCE_VOCAB_FILE, TARGET_VOCAB_FILE):
        if not (d / name).is_file():
            raise FileNotFoundError(
                f"{d / name} is missing: is {d} a model directory of crossattn train?"
            )
    config = Seq2SeqConfig.from_dict(json.loads((d / CONFIG_FILE).read_text())["model"])
    model = Seq2SeqTransformer(config)
    st_load(model, str(d / WEIGHTS_FILE))
    model.eval()
    return model, Vocabulary.load(d / SOURCE_VOCAB_FILE), Vocabulary.load(d / TARGET_VOCAB_FILE)


# --------------------------------------------------------------------------------------- distributed
class _Dist:
    """The process group under torchrun (world 1 without it)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = torch.device("cpu")
        if self.world > 1:
            import torch.distributed as dist

            if torch.cuda.is_available():
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                self.device = torch.device("cuda", local)
                backend = "nccl"
            else:
                backend = "gloo"
            if not dist.is_initialized():
                dist.init_process_group(backend)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on rank 0 (rank 0 decides when to stop)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


# --------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_loss(
    model: Seq2SeqTransformer, data: Sequence[Encoded], batch_tokens: int, device: torch.device
) -> dict[str, float]:
    """Teacher-forced dev metrics: per-token loss, perplexity and next-token accuracy."""
    was = model.training
    model.eval()
    nll = tokens = correct = 0.0
    lengths = [len(e.source) + len(e.target) + 1 for e in data]
    for idx in make_batches(lengths, batch_tokens):
        batch = _to(collate([data[i] for i in idx], False), device)
        out = model(batch.source, batch.source_mask, batch.target_in)
        logits = out.logits.float()
        valid = batch.target_out != PAD_ID
        nll += float(torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), batch.target_out, ignore_index=PAD_ID, reduction="sum"
        ))  # fmt: skip
        correct += float(((logits.argmax(-1) == batch.target_out) & valid).sum())
        tokens += float(valid.sum())
    model.train(was)
    loss = nll / max(tokens, 1.0)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "accuracy": correct / max(tokens, 1.0)}


@torch.no_grad()
def attention_for_pairs(
    model: Seq2SeqTransformer, pairs: Sequence[Encoded], batch_size: int = 64
) -> list[Tensor]:
    """Force-decoded cross-attention (layers, heads, n + 1, S) of every pair (see
    `force_decode_attention`), in the order given."""
    device = next(model.parameters()).device
    out: list[Tensor] = [torch.empty(0)] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i].source), len(pairs[i].target)))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        s = max(len(pairs[i].source) for i in idx)
        t = max(len(pairs[i].target) for i in idx)
        src = torch.full((len(idx), s), PAD_ID, dtype=torch.long)
        tgt = torch.full((len(idx), t), PAD_ID, dtype=torch.long)
        for r, i in enumerate(idx):
            src[r, : len(pairs[i].source)] = torch.tensor(pairs[i].source, dtype=torch.long)
            tgt[r, : len(pairs[i].target)] = torch.tensor(pairs[i].target, dtype=torch.long)
        lengths = torch.tensor([len(pairs[i].target) for i in idx])
        src, tgt = src.to(device), tgt.to(device)
        weights = force_decode_attention(model, src, src != PAD_ID, tgt, lengths)
        for r, i in enumerate(idx):
            out[i] = weights[r].cpu()
    return out


def _to(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return batch
    return Batch(*(None if t is None else t.to(device) for t in dataclasses.astuple(batch)))


# --------------------------------------------------------------------------------------- training
def _lr_factor(step: int, progress: float, opts: TrainOptions) -> float:
    warm = min(1.0, (step + 1) / max(1, opts.warmup))
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return warm * (opts.min_lr_ratio + (1.0 - opts.min_lr_ratio) * cos)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _read_examples(opts: TrainOptions):
    from .data.parallel import read_parallel

    data = read_parallel(
        opts.data, alignments=opts.alignments, one_indexed=opts.one_indexed,
        skip_bad_lines=opts.skip_bad_lines,
    )  # fmt: skip
    if getattr(data, "skipped", 0):
        _log(f"skipped {data.skipped} malformed line(s) of {opts.data}")
    return list(data.examples)


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
    opts.validate()  # again: the options may have changed since they were made
    if opts.steps is None and opts.minutes is None:
        raise ValueError("give steps or minutes (or both) to bound the training")
    if int(os.environ.get("RANK", "0")) == 0:  # the process that writes (torchrun: rank 0)
        check_out_dir(opts)
    if opts.guided_alignment and not opts.alignments and examples is None:
        raise ValueError(
            "guided_alignment needs gold links: set TrainOptions.alignments to the Pharaoh "
            "alignment file of data (or pass examples that carry links)"
        )
    t_start = time.perf_counter()
    out = Path(opts.out)
    examples = _read_examples(opts) if examples is None else list(examples)
    if not examples:
        raise ValueError(
            f"{opts.data}: no sentence pairs" if opts.data else "no sentence pairs to train on"
        )
    with_align = any(ex.sure or ex.possible for ex in examples)
    if opts.guided_alignment and not with_align:
        raise ValueError(
            f"guided_alignment needs gold links, but none of the {len(examples)} sentence pairs "
            "has any (give alignments, or examples with sure / possible links)"
        )
    train_idx, dev_idx = split_dev(len(examples), opts.dev_size, opts.seed)
    state: dict[str, Any] = {"step": 0, "seconds": 0.0}
    resuming = opts.resume
    where = ""
    if resuming:
        saved = json.loads((out / CONFIG_FILE).read_text())
        config = Seq2SeqConfig.from_dict(saved["model"])
        conflicts = _resume_conflicts(opts, config)
        if conflicts:
            raise ValueError(
                f"resume: these options differ from the model saved in {str(out)!r} (saved -> "
                f"given): {', '.join(conflicts)}; a resumed run keeps the saved model, so leave "
                "these options out (at their defaults) or set them to the saved values, or train "
                "a new model in another out directory"
            )
        src_tok, tgt_tok = load_tokenizers(
            out, Vocabulary.load(out / SOURCE_VOCAB_FILE), Vocabulary.load(out / TARGET_VOCAB_FILE)
        )
        conflicts = resume_conflicts(out, opts.tokenizer, opts.normalization)
        if conflicts:
            raise ValueError(
                f"resume: {', '.join(conflicts)}: the model saved in {str(out)!r} keeps its "
                "tokenizer; leave these options out or train a new model in another out directory"
            )
        # the options as they take effect: the model's settings are the checkpoint's
        opts = dataclasses.replace(opts, **{k: getattr(config, k) for k in _MODEL_FIELDS})
        where = f" in {str(out)!r}"
    else:
        kw = {"vocab_size": opts.vocab_size, "normalization": opts.normalization}
        src_tok = train_tokenizer(opts.tokenizer, [examples[i].source for i in train_idx], **kw)
        tgt_tok = train_tokenizer(opts.tokenizer, [examples[i].target for i in train_idx], **kw)
        config = opts.model_config(len(src_tok), len(tgt_tok))
    src_vocab, tgt_vocab = src_tok.vocab, tgt_tok.vocab
    if config.decoder_layers == 1 and opts.attention_layer == TrainOptions.attention_layer:
        opts = dataclasses.replace(opts, attention_layer=-1)  # the default: the only layer
    _check_attention_indices(opts, config, where)

    limit = config.max_len - 1  # room for BOS / EOS

    dist = _Dist()
    train_set = encode_examples([examples[i] for i in train_idx], src_tok, tgt_tok)
    dev_examples = [examples[i] for i in dev_idx]
    dev_set = encode_examples(dev_examples, src_tok, tgt_tok)
    if resuming and dist.main:
        src_rate = _unknown_rate([e.source for e in train_set])
        tgt_rate = _unknown_rate([e.target for e in train_set])
        if max(src_rate, tgt_rate) > OOV_WARN_RATE:
            warnings.warn(
                f"resume: {src_rate:.0%} of the source tokens and {tgt_rate:.0%} of the target "
                f"tokens of the training pairs are unknown to the vocabularies saved in "
                f"{str(out)!r} and become <unk>; is this the data the model was trained on? "
                "(a new vocabulary needs a new model: another out directory, without resume)",
                UserWarning,
                stacklevel=2,
            )
    too_long = [e for e in train_set if len(e.source) > limit or len(e.target) > limit]
    if len(too_long) == len(train_set):
        shortest = min(max(len(e.source), len(e.target)) for e in train_set)
        raise ValueError(
            f"no training pair fits the model: all {len(train_set)} training pair(s) are longer "
            f"than max_len - 1 = {limit} words (max_len={config.max_len}{where}; the shortest "
            f"pair has {shortest} words); use max_len >= {shortest + 1}"
        )
    if too_long:
        _log(
            f"leaving out {len(too_long)} training pair(s) longer than max_len - 1 = {limit} words"
        )
        train_set = [e for e in train_set if len(e.source) <= limit and len(e.target) <= limit]
    keep = [k for k, e in enumerate(dev_set) if len(e.source) <= limit and len(e.target) <= limit]
    dev_set = [dev_set[k] for k in keep]
    dev_examples = [dev_examples[k] for k in keep]

    torch.manual_seed(opts.seed)
    model = Seq2SeqTransformer(config).to(dist.device)
    optimizer = _make_optimizer(model, opts)
    if resuming:
        state = load_checkpoint(out / CHECKPOINT_FILE, model, optimizer)
        if opts.steps is not None and state["step"] >= opts.steps and _finished(out, state):
            if dist.main:
                _log(f"{out} is at step {state['step']} of {opts.steps} already: nothing to do")
            dist.close()
            return TrainResult(
                out, 0, time.perf_counter() - t_start, math.nan, state.get("dev", {})
            )
        if dist.main:
            _log(f"resuming {out} at step {state['step']}")
    if dist.main:
        if not resuming:
            _remove_model_files(out)  # none, or the model that overwrite replaces
        _remove_temporaries(out)  # left by a process killed while it saved
        out.mkdir(parents=True, exist_ok=True)
        if not resuming:
            src_vocab.save(out / SOURCE_VOCAB_FILE)
            tgt_vocab.save(out / TARGET_VOCAB_FILE)
            save_tokenizers(out, src_tok, tgt_tok)
        options = {k: v for k, v in dataclasses.asdict(opts).items() if k != "extra"}
        write_json(out / CONFIG_FILE, {"model": config.to_dict(), "train": options})
    n_params = sum(
        p.numel()
        for p in model.parameters()
        if p is not model.output.weight or not config.tie_embeddings
    )

    batches = make_batches(
        [len(e.source) + len(e.target) + 1 for e in train_set], opts.batch_tokens
    )
    if dist.main:
        _log(
            f"{len(train_set)} training pairs, {len(dev_set)} held out for dev, "
            f"{len(batches)} batches per epoch, vocab {len(src_vocab)}/{len(tgt_vocab)}, "
            f"{n_params / 1e6:.2f}M parameters, {dist.world} process(es) on {dist.device}"
        )
    run = _Run(model, optimizer, opts, dist, out, train_set, dev_set, batches, with_align,
               (src_tok, tgt_tok))  # fmt: skip
    step, ema_loss, dev_metrics, loop_seconds = _train_loop(run, state)
    start_step = int(state["step"])
    if dist.main:
        seconds = float(state.get("seconds", 0.0)) + loop_seconds
        dev_metrics = _finish(run, dev_examples, step, seconds, dev_metrics)
    dist.barrier()
    dist.close()
    return TrainResult(
        out=out,
        steps=step - start_step,
        seconds=time.perf_counter() - t_start,
        train_loss=float("nan") if ema_loss is None else ema_loss,
        dev=dev_metrics,
    )


def _make_optimizer(model: Seq2SeqTransformer, opts: TrainOptions) -> torch.optim.AdamW:
    """AdamW, with weight decay on the matrices other than the embeddings; the fused kernel (one
    pass over each parameter instead of a dozen elementwise ops) on CPU and CUDA parameters."""
    decay = [p for n, p in model.named_parameters() if p.dim() > 1 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() > 1 and "embed" not in n)]
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": opts.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=opts.lr, betas=(0.9, 0.98), eps=1e-9, fused=fused or None,
    )  # fmt: skip


def _finish(run: _Run, dev_examples, step: int, seconds: float, dev: dict) -> dict:
    """The end of a run (main process): the last dev evaluation, then the final save, with the
    extraction config chosen on the dev split. Returns the dev metrics."""
    run.model.eval()
    if run.dev_set:
        dev = evaluate_loss(run.model, run.dev_set, run.opts.batch_tokens, run.dist.device)
        _log(
            f"step {step}: dev loss {dev['loss']:.3f} accuracy {dev['accuracy']:.3f} "
            f"({seconds:.0f} s of training)"
        )

    def write_extraction() -> None:
        extraction = choose_extraction(
            run.model, run.dev_set, dev_examples, run.with_align, tokenizers=run.tokenizers
        )
        write_json(run.out / EXTRACTION_FILE, extraction.to_dict())

    _save(run.out, run.model, run.optimizer, step, seconds, dev, finish=write_extraction)
    return dev


# --------------------------------------------------------------------------------------- the loop
@dataclass
class _Run:
    """What the training loop works on."""

    model: Seq2SeqTransformer
    optimizer: torch.optim.Optimizer
    opts: TrainOptions
    dist: _Dist
    out: Path
    train_set: list[Encoded]
    dev_set: list[Encoded]
    batches: list[list[int]]
    with_align: bool
    tokenizers: tuple[Any, Any] | None = None  # (source, target) `Tokenizer`s

    def batch_at(self, step: int) -> list[int]:
        """The example indices of ``step``: every epoch visits the batches in a seeded order."""
        epoch, pos = divmod(step, len(self.batches))
        order = list(range(len(self.batches)))
        random.Random(self.opts.seed * 100_003 + epoch).shuffle(order)
        return self.batches[order[pos]]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) ended `train` at a step boundary, after it saved the checkpoint of that
    step in ``out`` (``resume=True`` continues from it). A `KeyboardInterrupt`."""

    def __init__(self, out: Path, step: int) -> None:
        super().__init__(
            f"interrupted at step {step}: its checkpoint is saved in {str(out)!r} "
            "(resume continues from it)"
        )
        self.out, self.step = out, step


class _Interrupts:
    """While active (main thread, SIGINT at Python's default): the first Ctrl-C only sets
    ``requested``, for the loop to stop at the next step boundary with a consistent checkpoint;
    a second one interrupts at once, as Ctrl-C does."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _Interrupts:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _train_loop(run: _Run, state: dict[str, Any]) -> tuple[int, float | None, dict, float]:
    """The steps from ``state["step"]`` to the end of the run, evaluating and saving on the way.

    Returns (step reached, smoothed training loss or None, dev metrics, seconds in the loop).
    Ctrl-C stops it at the next step boundary: it saves a checkpoint, then raises
    `TrainingInterrupted`.
    """
    opts, dist = run.opts, run.dist
    budget = None if opts.minutes is None else opts.minutes * 60.0
    step = start_step = int(state["step"])
    loop_start = time.perf_counter()
    last_eval = last_save = loop_start
    bar = None
    if dist.main and opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=opts.steps, initial=step, file=sys.stderr, unit="step",
                   dynamic_ncols=True, mininterval=1.0)  # fmt: skip
    run.model.train()
    tok_count, tok_time = 0, time.perf_counter()
    ema_loss: float | None = None
    dev_metrics: dict[str, float] = dict(state.get("dev", {}))
    with _Interrupts() as interrupts:
        try:
            while True:
                elapsed = time.perf_counter() - loop_start
                stop = (
                    (opts.steps is not None and step >= opts.steps)
                    or (budget is not None and elapsed >= budget)
                    or (opts.stop_after is not None and step - start_step >= opts.stop_after)
                )
                if dist.any(stop or interrupts.requested):
                    break
                progress = max(
                    0.0 if opts.steps is None else step / opts.steps,
                    0.0 if budget is None else elapsed / budget,
                )
                loss_now, tokens = _optimisation_step(run, step, progress)
                step += 1
                tok_count += tokens
                ema_loss = loss_now if ema_loss is None else 0.95 * ema_loss + 0.05 * loss_now
                now = time.perf_counter()
                if bar is not None:
                    bar.update(1)
                    if now - tok_time > 2.0 or step == 1:
                        rate = tok_count / max(now - tok_time, 1e-9)
                        tok_count, tok_time = 0, now
                        lr = run.optimizer.param_groups[0]["lr"]
                        bar.set_postfix(loss=f"{ema_loss:.3f}", tok_s=f"{rate:,.0f}",
                                        lr=f"{lr:.1e}", refresh=False)  # fmt: skip
                if dist.main and run.dev_set and now - last_eval >= opts.eval_seconds:
                    dev_metrics = evaluate_loss(
                        run.model, run.dev_set, opts.batch_tokens, dist.device
                    )
                    last_eval = tok_time = time.perf_counter()  # tokens/s counts training only
                    tok_count = 0
                    msg = (f"step {step}: dev loss {dev_metrics['loss']:.3f} "
                           f"accuracy {dev_metrics['accuracy']:.3f}")  # fmt: skip
                    (bar.write(msg, file=sys.stderr) if bar is not None else _log(msg))
                if dist.main and now - last_save >= opts.save_seconds:
                    seconds = float(state.get("seconds", 0.0)) + time.perf_counter() - loop_start
                    _save(run.out, run.model, run.optimizer, step, seconds, dev_metrics)
                    last_save = tok_time = time.perf_counter()
                    tok_count = 0
        finally:
            if bar is not None:
                bar.close()
    loop_seconds = time.perf_counter() - loop_start
    if dist.any(interrupts.requested):
        if dist.main:
            seconds = float(state.get("seconds", 0.0)) + loop_seconds
            _save(run.out, run.model, run.optimizer, step, seconds, dev_metrics)
        dist.barrier()
        dist.close()
        raise TrainingInterrupted(run.out, step)
    return step, ema_loss, dev_metrics, loop_seconds


def _optimisation_step(run: _Run, step: int, progress: float) -> tuple[float, int]:
    """One AdamW step on the batch of ``step`` (this process's rows of it): (the training
    loss per token of those rows, source + target tokens of the whole batch)."""
    opts, dist, model, optimizer = run.opts, run.dist, run.model, run.optimizer
    for group in optimizer.param_groups:
        group["lr"] = opts.lr * _lr_factor(step, progress, opts)
    full = collate([run.train_set[i] for i in run.batch_at(step)], run.with_align)
    norm = batch_norm(full)
    part = _to(full.rows(slice(dist.rank, None, dist.world)), dist.device)
    torch.manual_seed(opts.seed * 1_000_003 + step * 1009 + dist.rank)  # dropout
    optimizer.zero_grad(set_to_none=True)
    if part.source.shape[0] > 0:
        parts = batch_loss(model, part, opts, norm)
        parts.total.backward()
    else:
        parts = LossParts(torch.zeros(()), 0.0, 0, 0)
    params = list(model.parameters())
    for p in params:  # every process takes part in the all-reduce
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    dist.sum_grads(params)
    torch.nn.utils.clip_grad_norm_(params, opts.clip)
    optimizer.step()
    return parts.nll_sum / max(parts.tokens, 1), int(norm["tokens"] + norm["source_tokens"])


# --------------------------------------------------------------------------------------- saving
def _save(out, model, optimizer, step, seconds, dev, finish=None) -> None:
    """Save the checkpoint (the unit `resume` reads), then, for the readers of the directory,
    run ``finish`` (the end of a run: it writes extraction.json), write the weights, and last
    ``train_state.json``, which says whether the run ``finished`` at that step."""
    record = {"step": step, "seconds": seconds, "dev": dev}
    save_checkpoint(out / CHECKPOINT_FILE, model, optimizer, record)
    if finish is not None:
        finish()
    save_model(out, model, step=step)
    write_json(out / STATE_FILE, {**record, "finished": finish is not None})


def _finished(out: Path, state: dict[str, Any]) -> bool:
    """Whether the run in ``out`` finished at the checkpoint's step: its state says so and its
    weights are whole and of that step (so extraction.json was written for them)."""
    from safetensors import safe_open

    try:
        record = json.loads((out / STATE_FILE).read_text())
        with safe_open(str(out / WEIGHTS_FILE), framework="pt") as f:
            weights_step = (f.metadata() or {}).get("step")
    except Exception:  # missing, truncated or foreign files: not finished
        return False
    return (
        isinstance(record, dict)
        and record.get("finished") is True
        and record.get("step") == state["step"]
        and weights_step == str(state["step"])
        and (out / EXTRACTION_FILE).is_file()
    )


# the files `train` writes into a model directory (optimizer.safetensors: an earlier layout)
MODEL_DIR_FILES = (CHECKPOINT_FILE, STATE_FILE, WEIGHTS_FILE, "optimizer.safetensors",
                   EXTRACTION_FILE, CONFIG_FILE, SOURCE_VOCAB_FILE, TARGET_VOCAB_FILE,
                   TOKENIZER_FILE)  # fmt: skip


def model_files(directory: str | os.PathLike) -> list[str]:
    """The names of the model-directory files (see `MODEL_DIR_FILES`) that ``directory`` has."""
    d = Path(directory)
    return [name for name in MODEL_DIR_FILES if (d / name).is_file()]


def check_out_dir(opts: TrainOptions) -> None:
    """The model directory fits the options: `resume` needs its checkpoint; without `resume`
    or `overwrite`, it holds no model. `FileNotFoundError` / `FileExistsError` otherwise."""
    out = Path(opts.out)
    found = model_files(out)
    if opts.resume and CHECKPOINT_FILE not in found:
        what = f"it holds {_names(found)}" if found else "it holds no model files"
        raise FileNotFoundError(
            f"resume: no checkpoint found in {opts.out!r} (no {CHECKPOINT_FILE}; "
            f"{what if out.is_dir() else 'no such directory'}): check the path, or start "
            "a new run without resume"
        )
    if not opts.resume and not opts.overwrite and found:
        raise FileExistsError(
            f"{opts.out!r} already holds a model ({_names(found)}): continue its training "
            "with resume=True, replace it with overwrite=True, or choose another out directory"
        )


def _remove_temporaries(out: Path) -> None:
    """Remove the temporary files of saves that a killed process left (see `atomic_write`)."""
    for name in MODEL_DIR_FILES:
        for path in temporaries(out / name):
            shutil.rmtree(path, ignore_errors=True)


def _names(found: list[str]) -> str:
    return ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")


def _remove_model_files(out: Path) -> None:
    """Remove the model-directory files of ``out``, its checkpoint first (so that it can never
    pair with the new run's vocabularies)."""
    for name in model_files(out):
        (out / name).unlink()


def choose_extraction(
    model, dev_set: Sequence[Encoded], dev_examples, with_align: bool, tokenizers=None
):
    """The extraction config for `crossattn align`: chosen on the dev split when it has gold
    links (`crossattn.align.select_extraction`), else `crossattn.align.DEFAULT_EXTRACTION`.
    With subword ``tokenizers`` (source, target), links are extracted between tokens and
    merged into word links before they are scored against the word gold."""
    from .align import DEFAULT_EXTRACTION, select_extraction

    # only pairs with sure gold links can score a config (AER's recall counts sure links)
    pairs = [(e, ex) for e, ex in zip(dev_set, dev_examples) if ex.sure]
    if not with_align or not pairs:
        return DEFAULT_EXTRACTION
    pairs = pairs[:300]
    weights = attention_for_pairs(model, [e for e, _ in pairs])
    words = [ex for _, ex in pairs]
    if tokenizers is None or all(t.one_token_per_word for t in tokenizers):
        return select_extraction(weights, words)
    source_word_of = [e.word_of for e in tokenizers[0].encode_batch([ex.source for ex in words])]
    target_word_of = [e.word_of for e in tokenizers[1].encode_batch([ex.target for ex in words])]
    return select_extraction(
        weights, words, source_word_of=source_word_of, target_word_of=target_word_of
    )
