"""An encoder-decoder Transformer translator whose decoder attends to the source via `CrossAttention`.

Shapes: source ids (B, S) long, source_mask (B, S) bool (True = valid token), target ids (B, T)
long. Decoding: `crossattn.models.decoding` (greedy and beam search).

The encoder output is projected to every decoder layer's cross-attention keys and values once per
input (`prepare_contexts`); decoding steps and beams reuse those `PreparedContext`s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .. import _checks
from ..layers._common import FastDropout
from ..layers.attention import PreparedContext
from ..layers.transformer import TransformerDecoderLayer, TransformerEncoderLayer

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


_POSITIVE_FIELDS = (
    "source_vocab_size", "target_vocab_size", "d_model", "heads", "encoder_layers",
    "decoder_layers", "dim_ff", "max_len",
)  # fmt: skip


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Configuration of `Seq2SeqTransformer`.

    Attributes:
        source_vocab_size: number of source token ids (specials included).
        target_vocab_size: number of target token ids (specials included).
        d_model: feature size of every layer.
        heads: attention heads of every attention.
        encoder_layers: number of `TransformerEncoderLayer`.
        decoder_layers: number of `TransformerDecoderLayer`.
        dim_ff: hidden size of the feed-forward blocks.
        dropout: dropout probability (attention, residual, FFN and embeddings).
        norm_first: pre-norm (True) or post-norm (False) layers.
        max_len: the longest source or target sequence, in tokens, BOS/EOS included.
        tie_embeddings: share the target embedding with the output projection.
        pad_id, bos_id, eos_id: special ids, the same in both vocabularies.
    """

    source_vocab_size: int
    target_vocab_size: int
    d_model: int = 256
    heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    dim_ff: int = 1024
    dropout: float = 0.1
    norm_first: bool = True
    max_len: int = 128
    tie_embeddings: bool = True
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def __post_init__(self) -> None:
        # ints may be NumPy or torch integer scalars: each is stored as a plain int
        rules: dict[str, Any] = dict.fromkeys(_POSITIVE_FIELDS, _checks.positive_int)
        rules.update(dict.fromkeys(("pad_id", "bos_id", "eos_id"), _checks.nonnegative_int))
        rules.update(dict.fromkeys(("norm_first", "tie_embeddings"), _checks.boolean))
        rules["dropout"] = _checks.probability
        _checks.dataclass_fields(self, rules)
        specials = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
        if len({*specials.values(), UNK_ID}) != 4:
            raise ValueError(
                f"Seq2SeqConfig: pad_id, bos_id and eos_id must differ from each other and from "
                f"<unk> = {UNK_ID}, got {specials}"
            )
        need = max(max(specials.values()), UNK_ID) + 1  # every special id, <unk> included
        for name in ("source_vocab_size", "target_vocab_size"):
            if getattr(self, name) < need:
                raise ValueError(
                    f"Seq2SeqConfig.{name}={getattr(self, name)} must be at least {need}: the "
                    f"special ids {specials} and <unk> = {UNK_ID} need their own rows"
                )
        if self.d_model % self.heads != 0:
            raise ValueError(
                f"Seq2SeqConfig.d_model={self.d_model} must be divisible by heads={self.heads}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seq2SeqConfig:
        return cls(**_checks.known_fields(cls, data))


class DecoderOutput(NamedTuple):
    """What `Seq2SeqTransformer.decode` returns.

    Attributes:
        logits: (B, T, target_vocab_size).
        caches: one self-attention cache per decoder layer (None unless ``use_cache``).
        cross_weights: {layer index: weights (B, heads, T, S)} for the layers asked for.
    """

    logits: Tensor
    caches: list[PreparedContext] | None
    cross_weights: dict[int, Tensor]


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """Sinusoidal position encodings (length, dim) of "Attention Is All You Need"."""
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (length, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer: encoder self-attention stack, decoder with cross-attention.

    Example::

        config = Seq2SeqConfig(source_vocab_size=100, target_vocab_size=120, d_model=64)
        model = Seq2SeqTransformer(config)
        logits = model(source_ids, source_mask, target_in).logits  # (B, T, 120)
        out = crossattn.models.greedy_decode(model, source_ids, source_mask, max_len=30)
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        if not isinstance(config, Seq2SeqConfig):
            raise TypeError(f"config must be a Seq2SeqConfig, got {type(config).__name__}")
        self.config = c = config
        self.source_embed = nn.Embedding(c.source_vocab_size, c.d_model, padding_idx=c.pad_id)
        self.target_embed = nn.Embedding(c.target_vocab_size, c.d_model, padding_idx=c.pad_id)
        self.register_buffer(
            "positions", sinusoidal_positions(c.max_len, c.d_model), persistent=False
        )
        self.embed_dropout = FastDropout(c.dropout)
        kw = dict(heads=c.heads, dim_ff=c.dim_ff, dropout=c.dropout, norm_first=c.norm_first)
        self.encoder = nn.ModuleList(
            TransformerEncoderLayer(c.d_model, **kw) for _ in range(c.encoder_layers)
        )
        self.decoder = nn.ModuleList(
            TransformerDecoderLayer(c.d_model, **kw) for _ in range(c.decoder_layers)
        )
        # Pre-norm stacks end with a LayerNorm; post-norm layers already end normalised.
        self.encoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.output = nn.Linear(c.d_model, c.target_vocab_size, bias=False)
        self._reset_parameters()
        if c.tie_embeddings:
            self.output.weight = self.target_embed.weight

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for emb in (self.source_embed, self.target_embed):
            nn.init.normal_(emb.weight, std=self.config.d_model**-0.5)
            with torch.no_grad():
                emb.weight[self.config.pad_id].zero_()

    # ----------------------------------------------------------------------------- helpers
    def _embed(self, table: nn.Embedding, ids: Tensor, offset: int, name: str) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(
                f"{name} must be a long tensor (B, length), got "
                f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}"
            )
        length = ids.shape[1]
        _checks.token_ids(ids, table.num_embeddings, name)
        if offset + length > self.config.max_len:
            raise ValueError(
                f"{name} reaches position {offset + length} but the model's max_len is "
                f"{self.config.max_len}; shorten the input or raise Seq2SeqConfig.max_len"
            )
        scaled = table(ids) * math.sqrt(self.config.d_model)  # (B, length, D)
        return self.embed_dropout(scaled + self.positions[offset : offset + length])

    # ----------------------------------------------------------------------------- model
    def encode(self, source_ids: Tensor, source_mask: Tensor | None = None) -> Tensor:
        """Encode source ids (B, S) with source_mask (B, S) bool (True = valid) -> (B, S, D)."""
        if source_mask is not None and tuple(source_mask.shape) != tuple(source_ids.shape):
            raise ValueError(
                f"source_mask must have the shape of source_ids {tuple(source_ids.shape)}, got "
                f"{tuple(source_mask.shape)}"
            )
        tokens = self._embed(self.source_embed, source_ids, 0, "source_ids")
        for layer in self.encoder:
            tokens = layer(tokens, token_mask=source_mask)
        return self.encoder_norm(tokens)

    def prepare_contexts(
        self, memory: Tensor, source_mask: Tensor | None = None
    ) -> list[PreparedContext]:
        """Cross-attention keys and values of every decoder layer, projected once.

        Args:
            memory: (B, S, d_model), the encoder output.
            source_mask: (B, S) bool, True = valid source token.

        Returns:
            One `PreparedContext` per decoder layer (key/value (B, heads, S, d_model / heads)).
        """
        return [layer.prepare_context(memory, source_mask) for layer in self.decoder]

    def decode(
        self,
        target_ids: Tensor,
        contexts: Sequence[PreparedContext] | Tensor,
        *,
        source_mask: Tensor | None = None,
        caches: Sequence[PreparedContext] | None = None,
        use_cache: bool = False,
        attention_layers: Collection[int] = (),
    ) -> DecoderOutput:
        """Run the decoder on target positions ``past .. past + T - 1``.

        Args:
            target_ids: (B, T) long, the decoder inputs (BOS first).
            contexts: the prepared contexts of `prepare_contexts` (one per layer), or the raw
                encoder output (B, S, d_model), which then is projected again by every layer.
            source_mask: (B, S) bool, True = valid; only with a raw encoder output.
            caches: the self-attention caches of the previous call (``past`` positions), or None.
            use_cache: return the caches extended by these positions.
            attention_layers: indices of the decoder layers whose cross-attention weights
                (B, heads, T, S) to return. Under autograd they carry gradients.

        Returns:
            `DecoderOutput` (logits (B, T, V), caches, cross_weights).
        """
        n = len(self.decoder)
        if isinstance(contexts, Tensor):
            per_layer: Sequence[Tensor | PreparedContext] = [contexts] * n
        else:
            per_layer = contexts
            if len(per_layer) != n:
                raise ValueError(f"contexts must hold one PreparedContext per layer ({n})")
            if source_mask is not None:
                raise ValueError("source_mask goes with a raw encoder output, not with contexts")
            if isinstance(target_ids, Tensor) and target_ids.dim() == 2:
                rows = {c.batch_size for c in per_layer}
                if rows != {target_ids.shape[0]}:
                    raise ValueError(
                        f"target_ids has B={target_ids.shape[0]} rows but the prepared contexts "
                        f"hold B={sorted(rows)}: decode one target row per source row"
                    )
        if caches is not None and len(caches) != n:
            raise ValueError(
                f"caches must hold one cache per decoder layer ({n}), got {len(caches)}"
            )
        if isinstance(attention_layers, (str, bytes)):
            raise TypeError(
                f"attention_layers must be a collection of layer indices (ints), got "
                f"{attention_layers!r}"
            )
        wanted = set()
        for i in attention_layers:
            i = _checks.integer(i, "each of attention_layers")
            if not -n <= i < n:
                raise ValueError(f"attention_layers holds {i}, but the decoder has {n} layers")
            wanted.add(i % n)
        past = 0 if caches is None else caches[0].length
        tokens = self._embed(self.target_embed, target_ids, past, "target_ids")
        new_caches: list[PreparedContext] = []
        weights: dict[int, Tensor] = {}
        for i, layer in enumerate(self.decoder):
            out = layer(
                tokens,
                per_layer[i],
                source_mask=source_mask if isinstance(per_layer[i], Tensor) else None,
                cache=None if caches is None else caches[i],
                use_cache=use_cache,
                return_weights=i in wanted,
            )
            tokens = out.tokens
            if use_cache:
                new_caches.append(out.cache)
            if i in wanted:
                weights[i] = out.cross_weights
        logits = self.output(self.decoder_norm(tokens))  # (B, T, V)
        return DecoderOutput(logits, new_caches if use_cache else None, weights)

    def forward(
        self,
        source_ids: Tensor,
        source_mask: Tensor | None,
        target_in: Tensor,
        *,
        attention_layers: Collection[int] = (),
    ) -> DecoderOutput:
        """Teacher-forced forward pass.

        Args:
            source_ids: (B, S) long.
            source_mask: (B, S) bool, True = valid source token, or None.
            target_in: (B, T) long, the decoder inputs (BOS, y1, ..., y_{T-1}).
            attention_layers: decoder layers whose cross-attention weights (B, heads, T, S) to
                return (with gradients under autograd).

        Returns:
            `DecoderOutput` with logits (B, T, target_vocab_size).
        """
        memory = self.encode(source_ids, source_mask)
        contexts = self.prepare_contexts(memory, source_mask)
        return self.decode(target_in, contexts, attention_layers=attention_layers)
