"""`TrainOptions`: everything `crossattn train` takes, checked in one place.

The model settings (``d_model`` ... ``tie_embeddings``) are `Seq2SeqConfig`'s own fields: their
names and types come from the config, with the defaults of `crossattn train`
(`MODEL_DEFAULTS`); `TrainOptions.model_config` makes the config. The rules that relate options
to each other, to the model directory and to the data live in `crossattn.training.rules`,
shared with the command line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..models.seq2seq import Seq2SeqConfig
from ..models.tokenizer import KINDS, NORMALIZATIONS
from ._checks import as_bool, as_choice, as_int, as_number, as_path
from .rules import (
    ATTENTION_LAYER_DEFAULT,
    Problem,
    attention_problem,
    heads_problem,
    raise_problem,
    resolve_attention_layer,
)

# The model settings of a training run: `Seq2SeqConfig` fields, with the defaults of
# `crossattn train` (a smaller model than the config's own defaults).
MODEL_DEFAULTS: dict[str, Any] = {
    "d_model": 128, "heads": 4, "encoder_layers": 2, "decoder_layers": 2, "dim_ff": 256,
    "dropout": 0.0, "norm_first": True, "max_len": 128, "tie_embeddings": True,
}  # fmt: skip
MODEL_FIELDS = tuple(MODEL_DEFAULTS)


def _model_settings() -> type:
    """A keyword-only dataclass of the `MODEL_DEFAULTS` fields, typed as `Seq2SeqConfig` types
    them: the base of `TrainOptions`."""
    types = {f.name: f.type for f in dataclasses.fields(Seq2SeqConfig)}
    return dataclasses.make_dataclass(
        "ModelSettings",
        [(name, types[name], field(default=default)) for name, default in MODEL_DEFAULTS.items()],
        kw_only=True,
    )


ModelSettings = _model_settings()

_POSITIVE = ("d_model", "heads", "encoder_layers", "decoder_layers", "dim_ff", "batch_tokens")
_INTS: dict[str, tuple[int | None, bool]] = {  # name: (lowest value, None allowed)
    **{name: (1, False) for name in _POSITIVE}, "max_len": (2, False),
    "steps": (1, True), "stop_after": (1, True), "seed": (None, False), "warmup": (0, False),
    "dev_size": (0, False), "attention_layer": (None, False), "attention_head": (None, False),
    "vocab_size": (5, True),
}  # fmt: skip
_FINITE_POSITIVE = ("a finite number > 0", lambda v: 0 < v < math.inf)
_FINITE_NON_NEGATIVE = ("a finite number >= 0", lambda v: 0 <= v < math.inf)
_PROBABILITY = ("in [0, 1)", lambda v: 0 <= v < 1)
_SECONDS = ("a number >= 0 (or math.inf)", lambda v: v >= 0)
_NUMBERS: dict[str, tuple[tuple[str, Any], bool]] = {  # name: ((range as text, check), None ok)
    "minutes": (_FINITE_POSITIVE, True), "dropout": (_PROBABILITY, False),
    "lr": (_FINITE_POSITIVE, False), "min_lr_ratio": (("in [0, 1]", lambda v: 0 <= v <= 1), False),
    "weight_decay": (_FINITE_NON_NEGATIVE, False),
    "clip": (("a finite number > 0 (the largest gradient norm)", _FINITE_POSITIVE[1]), False),
    "label_smoothing": (_PROBABILITY, False), "guided_weight": (_FINITE_NON_NEGATIVE, False),
    "entropy_weight": (_FINITE_NON_NEGATIVE, False),
    "coverage_weight": (_FINITE_NON_NEGATIVE, False),
    "eval_seconds": (_SECONDS, False), "save_seconds": (_SECONDS, False),
}  # fmt: skip
_BOOLS = ("one_indexed", "skip_bad_lines", "resume", "overwrite", "norm_first", "tie_embeddings",
          "guided_alignment", "progress")  # fmt: skip


@dataclass(kw_only=True)
class TrainOptions(ModelSettings):
    """Everything `crossattn train` takes; the defaults suit ~20k pairs of up to ~25 words.

    Model: d_model, heads, encoder_layers, decoder_layers, dim_ff, dropout, norm_first, max_len,
    tie_embeddings: the fields of `Seq2SeqConfig`, with the defaults in `MODEL_DEFAULTS`.
    Optimisation: AdamW with ``lr`` peak, linear warm-up over ``warmup`` steps then cosine decay
    to ``lr * min_lr_ratio`` at the end of the run (the end is ``steps`` or ``minutes``,
    whichever comes first), gradient clipping at ``clip``, label smoothing. ``batch_tokens``
    bounds source + target tokens per batch. ``stop_after`` ends this run after that many steps
    without changing the schedule (a later ``resume`` continues exactly as if the run had not
    stopped).

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
    naming the option. Ints may be numpy or torch integer scalars. ``eval_seconds`` and
    ``save_seconds`` may be ``math.inf`` (only at the end).
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
    attention_layer: int = ATTENTION_LAYER_DEFAULT
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
        self.data = as_path("TrainOptions.data", self.data)
        self.out = as_path("TrainOptions.out", self.out)
        self.alignments = as_path("TrainOptions.alignments", self.alignments, optional=True)
        for name in _BOOLS:
            as_bool(f"TrainOptions.{name}", getattr(self, name))
        as_choice("TrainOptions.tokenizer", self.tokenizer, KINDS)
        as_choice("TrainOptions.normalization", self.normalization, NORMALIZATIONS, optional=True)
        if self.resume and self.overwrite:
            raise ValueError(
                "TrainOptions.resume and TrainOptions.overwrite exclude each other: resume "
                "continues the model in out, overwrite replaces it"
            )
        if not isinstance(self.extra, dict):
            raise TypeError(f"TrainOptions.extra must be a dict, got {type(self.extra).__name__}")
        for name, (low, optional) in _INTS.items():
            setattr(self, name, as_int(f"TrainOptions.{name}", getattr(self, name), low, optional))
        for name, ((expected, ok), optional) in _NUMBERS.items():
            value = as_number(f"TrainOptions.{name}", getattr(self, name), expected, ok, optional)
            setattr(self, name, value)
        raise_problem(heads_problem(self.d_model, self.heads))

    def model_settings(self) -> dict[str, Any]:
        """The `Seq2SeqConfig` fields these options set (`MODEL_FIELDS`), by name."""
        return {name: getattr(self, name) for name in MODEL_FIELDS}

    def model_config(self, source_vocab: int, target_vocab: int) -> Seq2SeqConfig:
        """The config of a new model with these vocabulary sizes."""
        return Seq2SeqConfig(source_vocab, target_vocab, **self.model_settings())

    def with_model(self, config: Seq2SeqConfig) -> TrainOptions:
        """These options with ``config``'s model settings (a resumed run keeps its model)."""
        return dataclasses.replace(self, **{k: getattr(config, k) for k in MODEL_FIELDS})

    def wants_attention(self) -> bool:
        """Whether an attention loss is on (the model must hand back cross-attention weights)."""
        return self.guided_alignment or self.entropy_weight > 0 or self.coverage_weight > 0

    def attention_layer_for(self, config: Seq2SeqConfig) -> int:
        """The decoder layer of the attention losses in ``config``'s model: ``attention_layer``,
        where the default means the only layer of a one-layer decoder."""
        layer = None if self.attention_layer == ATTENTION_LAYER_DEFAULT else self.attention_layer
        return resolve_attention_layer(layer, config.decoder_layers)

    def attention_problem(self, config: Seq2SeqConfig, model: str = "the model") -> Problem | None:
        """The attention losses that are on use a layer and head that ``config``'s model has."""
        return attention_problem(
            self.attention_layer_for(config) if self.wants_attention() else None,
            self.attention_head if self.guided_alignment else None,
            config.decoder_layers,
            config.heads,
            model,
        )

    def record(self) -> dict[str, Any]:
        """The options as ``config.json`` records them (``extra`` left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
