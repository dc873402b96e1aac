"""`TrainOptions`: everything `crossattn train` takes, checked in one place.

The model settings (``d_model`` ... ``tie_embeddings``) are `Seq2SeqConfig`'s own fields: their
names and types come from the config, with the defaults of `crossattn train`
(`MODEL_DEFAULTS`); `TrainOptions.model_config` makes the config. The rules that relate options
to each other, to the model directory and to the data live in `crossattn.training.rules`,
shared with the command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..models.seq2seq import Seq2SeqConfig
from ..models.tokenizer import KINDS, NORMALIZATIONS
from ._checks import (
    FINITE_NON_NEGATIVE,
    FINITE_POSITIVE,
    PROBABILITY,
    SECONDS,
    Check,
    as_bool,
    choice,
    finite_positive,
    instance,
    integer,
    number,
    path,
)
from .rules import (
    ATTENTION_LAYER_DEFAULT,
    Problem,
    attention_problem,
    heads_problem,
    raise_problem,
    resolve_attention_layer,
)

# The model settings of a training run: `Seq2SeqConfig` fields, with the defaults of
# `crossattn train` (a smaller model than the config's own defaults) and their checks.
_MODEL_OPTIONS: dict[str, tuple[Any, Check]] = {
    "d_model": (128, integer(1)), "heads": (4, integer(1)), "encoder_layers": (2, integer(1)),
    "decoder_layers": (2, integer(1)), "dim_ff": (256, integer(1)), "dropout": (0.0, PROBABILITY),
    "norm_first": (True, as_bool), "max_len": (128, integer(2)), "tie_embeddings": (True, as_bool),
}  # fmt: skip
MODEL_DEFAULTS: dict[str, Any] = {name: default for name, (default, _) in _MODEL_OPTIONS.items()}
MODEL_FIELDS = tuple(MODEL_DEFAULTS)


def option(default: Any, check: Check) -> Any:
    """A `TrainOptions` field: its default (a type: made new for each instance) and the check
    that `TrainOptions.validate` runs on it."""
    if isinstance(default, type):
        return field(default_factory=default, metadata={"check": check})
    return field(default=default, metadata={"check": check})


def _model_settings() -> type:
    """A keyword-only dataclass of the model settings, typed as `Seq2SeqConfig` types them:
    the base of `TrainOptions`."""
    types = {f.name: f.type for f in dataclasses.fields(Seq2SeqConfig)}
    return dataclasses.make_dataclass(
        "ModelSettings",
        [(name, types[name], option(*spec)) for name, spec in _MODEL_OPTIONS.items()],
        kw_only=True,
    )


ModelSettings = _model_settings()
_OPTIONAL_PATH, _OPTIONAL_STEPS, _OPTIONAL_SIZE = path(True), integer(1, True), integer(5, True)


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

    data: str = field(metadata={"check": path()})
    out: str = field(metadata={"check": path()})
    alignments: str | None = option(None, _OPTIONAL_PATH)
    one_indexed: bool = option(False, as_bool)
    skip_bad_lines: bool = option(False, as_bool)
    steps: int | None = option(None, _OPTIONAL_STEPS)
    minutes: float | None = option(None, number("a finite number > 0", finite_positive, True))
    resume: bool = option(False, as_bool)
    overwrite: bool = option(False, as_bool)
    stop_after: int | None = option(None, _OPTIONAL_STEPS)
    seed: int = option(0, integer())
    # tokens: see crossattn.models.tokenizer (vocab_size None: every word, or 8000 subwords;
    # normalization None: "none" for word, "nfkc" for bpe and unigram)
    tokenizer: str = option("word", choice(KINDS))
    vocab_size: int | None = option(None, _OPTIONAL_SIZE)
    normalization: str | None = option(None, choice(NORMALIZATIONS, optional=True))
    # optimisation
    batch_tokens: int = option(1500, integer(1))
    lr: float = option(3e-3, FINITE_POSITIVE)
    warmup: int = option(50, integer(0))
    min_lr_ratio: float = option(0.05, number("in [0, 1]", lambda v: 0 <= v <= 1))
    weight_decay: float = option(0.01, FINITE_NON_NEGATIVE)
    clip: float = option(1.0, number("a finite number > 0 (the largest gradient norm)",
                                     finite_positive))  # fmt: skip
    label_smoothing: float = option(0.1, PROBABILITY)
    # attention losses
    guided_alignment: bool = option(False, as_bool)
    guided_weight: float = option(1.0, FINITE_NON_NEGATIVE)
    attention_layer: int = option(ATTENTION_LAYER_DEFAULT, integer())
    attention_head: int = option(0, integer())
    entropy_weight: float = option(0.0, FINITE_NON_NEGATIVE)
    coverage_weight: float = option(0.0, FINITE_NON_NEGATIVE)
    # held-out split, evaluation, saving
    dev_size: int = option(500, integer(0))
    eval_seconds: float = option(60.0, SECONDS)
    save_seconds: float = option(120.0, SECONDS)
    progress: bool = option(True, as_bool)
    extra: dict[str, Any] = option(dict, instance(dict))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every option's type and range: `TypeError` / `ValueError` naming the option."""
        for f in dataclasses.fields(self):
            name = f"TrainOptions.{f.name}"
            setattr(self, f.name, f.metadata["check"](name, getattr(self, f.name)))
        if self.resume and self.overwrite:
            raise ValueError(
                "TrainOptions.resume and TrainOptions.overwrite exclude each other: resume "
                "continues the model in out, overwrite replaces it"
            )
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
