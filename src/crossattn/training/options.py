"""`TrainOptions`: everything `crossattn train` takes, checked in one place.

The model settings (``d_model`` ... ``tie_embeddings``) are `Seq2SeqConfig`'s own fields: their
names and types come from the config, with the defaults of `crossattn train`
(`MODEL_DEFAULTS`); `TrainOptions.model_config` makes the config. The rules that relate options
to each other, to the model directory and to the data live in `crossattn.training.rules`,
shared with the command line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import _checks
from ..models.seq2seq import Seq2SeqConfig
from ..models.tokenizer import KINDS, NORMALIZATIONS
from .rules import (
    ATTENTION_LAYER_DEFAULT,
    Problem,
    attention_problem,
    heads_problem,
    raise_problem,
    resolve_attention_layer,
)

# A field's rule, as `crossattn._checks` writes them: ``rule(value, name) -> value``.
Check = Callable[[Any, str], Any]


def _at_least(minimum: int) -> Check:
    """`crossattn._checks.integer` with this minimum."""
    return lambda value, name: _checks.integer(value, name, minimum=minimum)


def _optional(rule: Check) -> Check:
    """`rule`, with None let through (the option's "not set")."""
    return lambda value, name: None if value is None else rule(value, name)


def _dict(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict, got {type(value).__name__}")
    return value


_POSITIVE, _PROBABILITY, _WEIGHT = (
    _checks.positive_int,
    _checks.probability,
    _checks.nonnegative_real,
)


def _seconds(value: Any, name: str) -> float:
    """A period: a real >= 0, or math.inf (only at the end)."""
    return _checks.real(value, name, low=0.0, infinite=True)


# The model settings of a training run: `Seq2SeqConfig` fields, with the defaults of
# `crossattn train` (a smaller model than the config's own defaults) and their rules.
_MODEL_OPTIONS: dict[str, tuple[Any, Check]] = {
    "d_model": (128, _POSITIVE), "heads": (4, _POSITIVE), "encoder_layers": (2, _POSITIVE),
    "decoder_layers": (2, _POSITIVE), "dim_ff": (256, _POSITIVE), "dropout": (0.0, _PROBABILITY),
    "norm_first": (True, _checks.boolean), "max_len": (128, _at_least(2)),
    "tie_embeddings": (True, _checks.boolean),
}  # fmt: skip
MODEL_DEFAULTS: dict[str, Any] = {name: default for name, (default, _) in _MODEL_OPTIONS.items()}
MODEL_FIELDS = tuple(MODEL_DEFAULTS)


def option(default: Any, check: Check) -> Any:
    """A `TrainOptions` field: its default (a type: made new for each instance) and the rule
    (`Check`) that `TrainOptions.validate` runs on it."""
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
_OPTIONAL_PATH, _OPTIONAL_STEPS = _optional(_checks.path), _optional(_POSITIVE)
_BOOL = _checks.boolean


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

    data: str = field(metadata={"check": _checks.path})
    out: str = field(metadata={"check": _checks.path})
    alignments: str | None = option(None, _OPTIONAL_PATH)
    one_indexed: bool = option(False, _BOOL)
    skip_bad_lines: bool = option(False, _BOOL)
    steps: int | None = option(None, _OPTIONAL_STEPS)
    minutes: float | None = option(None, _optional(_checks.positive_real))
    resume: bool = option(False, _BOOL)
    overwrite: bool = option(False, _BOOL)
    stop_after: int | None = option(None, _OPTIONAL_STEPS)
    seed: int = option(0, _checks.integer)
    # tokens: see crossattn.models.tokenizer (vocab_size None: every word, or 8000 subwords;
    # normalization None: "none" for word, "nfkc" for bpe and unigram)
    tokenizer: str = option("word", lambda v, name: _checks.choice(v, name, KINDS))
    vocab_size: int | None = option(None, _optional(_at_least(5)))
    normalization: str | None = option(
        None, _optional(lambda v, name: _checks.choice(v, name, NORMALIZATIONS))
    )
    # optimisation
    batch_tokens: int = option(1500, _POSITIVE)
    lr: float = option(3e-3, _checks.positive_real)
    warmup: int = option(50, _checks.nonnegative_int)
    min_lr_ratio: float = option(
        0.05, lambda v, name: _checks.real(v, name, low=0.0, high=1.0, high_open=False)
    )
    weight_decay: float = option(0.01, _WEIGHT)
    clip: float = option(1.0, _checks.positive_real)  # the largest gradient norm
    label_smoothing: float = option(0.1, _PROBABILITY)
    # attention losses
    guided_alignment: bool = option(False, _BOOL)
    guided_weight: float = option(1.0, _WEIGHT)
    attention_layer: int = option(ATTENTION_LAYER_DEFAULT, _checks.integer)
    attention_head: int = option(0, _checks.integer)
    entropy_weight: float = option(0.0, _WEIGHT)
    coverage_weight: float = option(0.0, _WEIGHT)
    # held-out split, evaluation, saving
    dev_size: int = option(500, _checks.nonnegative_int)
    eval_seconds: float = option(60.0, _seconds)
    save_seconds: float = option(120.0, _seconds)
    progress: bool = option(True, _BOOL)
    extra: dict[str, Any] = option(dict, _dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every option's type and range: `TypeError` / `ValueError` naming the option."""
        for f in dataclasses.fields(self):
            name = f"TrainOptions.{f.name}"
            setattr(self, f.name, f.metadata["check"](getattr(self, f.name), name))
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
