"""Perceiver and Perceiver IO: learned latents cross-attend to a long input.

`PerceiverEncoder`: latents (num_latents, latent_dim) cross-attend to the inputs (B, S, input_dim),
then pass `depth` latent self-attention blocks; this repeats `num_cross_attends` times, with
optional weight sharing between the repeats. `PerceiverDecoder`: output queries (B, O, query_dim)
cross-attend to the latents. `PerceiverIO`: the two, with optional learned output queries.

Memory, by design. The cost that grows with S is the keys and values of the inputs,
(B, cross_heads, S, cross_dim_head) each. They are projected `input_chunk_size` tokens at a time
into one preallocated buffer (the LayerNorm and projection intermediates exist for one chunk
only), and on the CPU the latents-to-inputs attention runs on the memory-bounded "chunked"
backend, which never holds more than one score tile. Without grad, the peak extra memory is::

    2 * B * S * cross_heads * cross_dim_head * itemsize   # K and V of the inputs
    (x2 when input_mask pads some tokens: the op zeroes padded K/V in a copy)
    + O(B * input_chunk_size * max(input_dim, cross_heads * cross_dim_head) * itemsize)
    + O(one score tile, about 4 MiB) + the latent activations (B, num_latents, latent_dim)

`benchmarks/bench_perceiver.py` measures it (65,536 tokens, 256 latents; benchmarks/RESULTS.md).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import _checks
from ..backends import use_backend
from ._common import (
    FeedForward,
    check_features,
    check_nonempty,
)
from .attention import CrossAttention, PreparedContext


@dataclass(frozen=True)
class _BlockOptions:
    """The attention heads, feed-forward size and dropout of one kind of Perceiver block."""

    heads: int
    dim_head: int
    ff_mult: int
    dropout: float
    backend: str | None

    def attention(self, query_dim: int, context_dim: int | None = None) -> CrossAttention:
        return CrossAttention(
            query_dim,
            context_dim,
            heads=self.heads,
            dim_head=self.dim_head,
            dropout=self.dropout,
            backend=self.backend,
        )

    def feed_forward(self, dim: int) -> FeedForward:
        return FeedForward(dim, dim * self.ff_mult, dropout=self.dropout)


class LatentSelfAttentionBlock(nn.Module):
    """Pre-norm block: latents attend to themselves, then a GELU feed-forward.

    forward(latents (B, N, dim)) -> (B, N, dim).
    """

    def __init__(self, dim: int, options: _BlockOptions):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn_latents_to_latents = options.attention(dim)
        self.attn_latents_to_latents.role = "self"
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = options.feed_forward(dim)

    def forward(self, latents: Tensor) -> Tensor:
        normed = self.norm_attn(latents)
        latents = latents + self.attn_latents_to_latents(normed, normed)
        return latents + self.ff(self.norm_ff(latents))


class LatentCrossAttendBlock(nn.Module):
    """Pre-norm block: latents (B, N, latent_dim) cross-attend to inputs, then a feed-forward.

    `prepare(inputs (B, S, input_dim), input_mask (B, S) | None, chunk_size)` projects the inputs
    to keys and values chunk by chunk; `forward(latents, prepared)` attends to them.
    """

    def __init__(self, latent_dim: int, input_dim: int, options: _BlockOptions):
        super().__init__()
        self.norm_latents = nn.LayerNorm(latent_dim)
        self.norm_inputs = nn.LayerNorm(input_dim)
        self.attn_latents_to_inputs = options.attention(latent_dim, input_dim)
        self.norm_ff = nn.LayerNorm(latent_dim)
        self.ff = options.feed_forward(latent_dim)

    def prepare(
        self, inputs: Tensor, input_mask: Tensor | None, chunk_size: int
    ) -> PreparedContext:
        """Keys and values (B, heads, S, dim_head) of the normalised inputs, `chunk_size` at a time."""
        attn = self.attn_latents_to_inputs
        b, s, _ = inputs.shape
        padded = input_mask is not None and not bool(input_mask.all())

        def project(start: int, end: int) -> PreparedContext:
            part = inputs[:, start:end]  # (B, c, input_dim)
            if padded:  # padded tokens may hold NaN: zero them before the LayerNorm
                part = part.masked_fill(~input_mask[:, start:end, None], 0.0)
            return attn.prepare_context(self.norm_inputs(part))  # key, value (B, Hk, c, D)

        if s <= chunk_size:
            whole = project(0, s)
            return PreparedContext(whole.key, whole.value, input_mask, layer_id=id(attn))
        key = value = None
        for start in range(0, s, chunk_size):
            end = min(start + chunk_size, s)
            part = project(start, end)
            if key is None:
                shape = (b, attn.kv_heads, s, attn.dim_head)  # (B, Hk, S, D)
                key = part.key.new_empty(shape)
                value = part.value.new_empty(shape)
            key[:, :, start:end] = part.key
            value[:, :, start:end] = part.value
        return PreparedContext(key=key, value=value, key_mask=input_mask, layer_id=id(attn))

    def forward(self, latents: Tensor, prepared: PreparedContext) -> Tensor:
        latents = latents + self.attn_latents_to_inputs(self.norm_latents(latents), prepared)
        return latents + self.ff(self.norm_ff(latents))


class PerceiverEncoder(nn.Module):
    """Learned latents cross-attend to a long input, then self-attend.

    Per cross-attend: latents <- latents + attn(latents -> inputs), then a feed-forward, then
    `depth` latent self-attention blocks (all pre-norm, residual). With `num_cross_attends` > 1
    this repeats; with `share_weights=True` the repeats after the first share one set of weights
    (cross-attend and latent blocks), as in the Perceiver paper, and reuse one projection of the
    inputs.

    Args:
        input_dim: feature size of the inputs.
        num_latents: number of learned latents N.
        latent_dim: feature size of the latents.
        heads, dim_head: heads of the latent self-attention.
        depth: latent self-attention blocks after each cross-attend (0 allowed).
        cross_heads, cross_dim_head: heads of the latents-to-inputs attention (default 1 and 64:
            these set the size of the input keys/values, the memory that grows with S).
        num_cross_attends: how many times the latents cross-attend to the inputs.
        share_weights: share the weights of the cross-attends after the first.
        ff_mult: hidden size of the feed-forwards, as a multiple of their width.
        dropout: dropout on attention probabilities and in the feed-forwards.
        input_chunk_size: input tokens normalised and projected at a time.
        backend: backend of the latent self-attention (None: dispatch).
        input_backend: backend of the latents-to-inputs attention; "auto" (default) runs the
            memory-bounded "chunked" backend on the CPU (even inside an outer `use_backend`)
            and dispatches elsewhere; None dispatches (and follows `use_backend`); a name pins
            it.

    Shapes: forward(inputs (B, S, input_dim), input_mask (B, S) bool or None, True = valid
    token) -> latents (B, num_latents, latent_dim).
    """

    def __init__(
        self,
        input_dim: int,
        *,
        num_latents: int,
        latent_dim: int,
        heads: int,
        dim_head: int,
        depth: int,
        cross_heads: int = 1,
        cross_dim_head: int = 64,
        num_cross_attends: int = 1,
        share_weights: bool = False,
        ff_mult: int = 4,
        dropout: float = 0.0,
        input_chunk_size: int = 4096,
        backend: str | None = None,
        input_backend: str | None = "auto",
    ):
        super().__init__()
        (
            input_dim,
            num_latents,
            latent_dim,
            heads,
            dim_head,
            cross_heads,
            cross_dim_head,
            num_cross_attends,
            ff_mult,
            input_chunk_size,
        ) = _checks.positive_ints(
            input_dim=input_dim,
            num_latents=num_latents,
            latent_dim=latent_dim,
            heads=heads,
            dim_head=dim_head,
            cross_heads=cross_heads,
            cross_dim_head=cross_dim_head,
            num_cross_attends=num_cross_attends,
            ff_mult=ff_mult,
            input_chunk_size=input_chunk_size,
        )
        depth = _checks.nonnegative_int(depth, "depth")
        self.input_dim, self.num_latents, self.latent_dim = input_dim, num_latents, latent_dim
        self.depth, self.num_cross_attends = depth, num_cross_attends
        self.share_weights = share_weights
        self.input_chunk_size = input_chunk_size
        self.input_backend = input_backend
        pinned = None if input_backend in (None, "auto") else input_backend
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim) * 0.02)

        cross = _BlockOptions(cross_heads, cross_dim_head, ff_mult, dropout, pinned)
        latent = _BlockOptions(heads, dim_head, ff_mult, dropout, backend)

        def stage() -> nn.ModuleDict:
            return nn.ModuleDict(
                {
                    "cross": LatentCrossAttendBlock(latent_dim, input_dim, cross),
                    "blocks": nn.ModuleList(
                        LatentSelfAttentionBlock(latent_dim, latent) for _ in range(depth)
                    ),
                }
            )

        distinct = min(num_cross_attends, 2) if share_weights else num_cross_attends
        self.stages = nn.ModuleList(stage() for _ in range(distinct))

    def stage_schedule(self) -> list[int]:
        """Index into `stages` of each cross-attend, in order."""
        return [min(i, len(self.stages) - 1) for i in range(self.num_cross_attends)]

    def forward(self, inputs: Tensor, input_mask: Tensor | None = None) -> Tensor:
        """Encode `inputs` (B, S, input_dim) into latents (B, num_latents, latent_dim).

        `input_mask`: (B, S) bool, True = valid input token (padding may hold anything, NaN
        included). In a row with no valid token the attention to the inputs is exactly 0
        before its output projection, so the latents receive only that projection's bias.
        `inputs` must have the dtype and device of the encoder's parameters and at least one
        token (S > 0).
        """
        check_features(
            "inputs",
            inputs,
            self.input_dim,
            "(B, S, input_dim)",
            like=self.stages[0]["cross"].norm_inputs.weight,
        )
        b, s, _ = inputs.shape
        check_nonempty(
            "inputs",
            s,
            inputs.shape,
            "S=0 tokens",
            "pass at least one input token per row (padding stays in the sequence, marked False "
            "in input_mask; a row with no valid token is allowed)",
        )
        _checks.token_mask("input_mask", input_mask, (b, s), "(B, S)")
        latents = self.latents.to(inputs.dtype).expand(b, -1, -1)  # (B, N, latent_dim)
        auto = self.input_backend == "auto" and inputs.device.type == "cpu"
        prepared: PreparedContext | None = None
        prepared_for = -1
        for index in self.stage_schedule():
            stage = self.stages[index]
            if prepared_for != index:
                prepared = None  # free the previous keys/values before projecting new ones
                prepared = stage["cross"].prepare(inputs, input_mask, self.input_chunk_size)
                prepared_for = index
            with use_backend("chunked") if auto else nullcontext():
                latents = stage["cross"](latents, prepared)
            for block in stage["blocks"]:
                latents = block(latents)
        return latents


class PerceiverDecoder(nn.Module):
    """Output queries cross-attend to the latents (Perceiver IO's decoder).

    out = to_out(x + ff(norm(x))) with x = queries + attn(norm(queries) -> norm(latents)).

    Args:
        query_dim: feature size of the output queries.
        latent_dim: feature size of the latents.
        heads, dim_head: heads of the queries-to-latents attention.
        out_dim: feature size of the output (a final linear); None keeps query_dim, no linear.
        ff_mult: hidden size of the feed-forward, as a multiple of query_dim.
        dropout: dropout on attention probabilities and in the feed-forward.
        backend: backend of the attention (None: dispatch).

    Shapes: forward(queries (B, O, query_dim) or (O, query_dim) shared by the batch,
    latents (B, N, latent_dim), latent_mask (B, N) bool or None) -> (B, O, out_dim).
    """

    def __init__(
        self,
        query_dim: int,
        latent_dim: int,
        *,
        heads: int = 1,
        dim_head: int = 64,
        out_dim: int | None = None,
        ff_mult: int = 4,
        dropout: float = 0.0,
        backend: str | None = None,
    ):
        super().__init__()
        query_dim, latent_dim, heads, dim_head, ff_mult = _checks.positive_ints(
            query_dim=query_dim,
            latent_dim=latent_dim,
            heads=heads,
            dim_head=dim_head,
            ff_mult=ff_mult,
        )
        if out_dim is not None:
            out_dim = _checks.positive_int(out_dim, "out_dim")
        self.query_dim, self.latent_dim = query_dim, latent_dim
        self.out_dim = query_dim if out_dim is None else out_dim
        self.norm_queries = nn.LayerNorm(query_dim)
        self.norm_latents = nn.LayerNorm(latent_dim)
        self.attn_queries_to_latents = CrossAttention(
            query_dim, latent_dim, heads=heads, dim_head=dim_head, dropout=dropout, backend=backend
        )
        self.norm_ff = nn.LayerNorm(query_dim)
        self.ff = FeedForward(query_dim, query_dim * ff_mult, dropout=dropout)
        self.to_out = nn.Identity() if out_dim is None else nn.Linear(query_dim, out_dim)

    def forward(
        self, queries: Tensor, latents: Tensor, latent_mask: Tensor | None = None
    ) -> Tensor:
        """Decode: the output queries cross-attend to the latents.

        Args:
            queries: (B, O, query_dim), or (O, query_dim) shared by every batch row. O = 0 gives
                an empty output (B, 0, out_dim).
            latents: (B, N, latent_dim), N > 0 (e.g. the output of `PerceiverEncoder`).
            latent_mask: (B, N) bool, True = valid latent (may be attended); None: all valid.

        Returns:
            (B, O, out_dim).

        Queries and latents must have the dtype and device of the decoder's parameters.
        """
        check_features(
            "latents", latents, self.latent_dim, "(B, N, latent_dim)", like=self.norm_latents.weight
        )
        b, n, _ = latents.shape
        check_nonempty(
            "latents",
            n,
            latents.shape,
            "N=0 latents",
            "pass at least one latent per row (mark padding False in latent_mask instead)",
        )
        if isinstance(queries, Tensor) and queries.dim() == 2:
            queries = queries.expand(b, -1, -1)  # (O, query_dim) -> (B, O, query_dim)
        check_features(
            "queries",
            queries,
            self.query_dim,
            "(B, O, query_dim) or (O, query_dim)",
            like=self.norm_queries.weight,
        )
        if queries.shape[0] != b:
            raise ValueError(
                f"queries have B={queries.shape[0]} but latents have B={b}: queries "
                f"{tuple(queries.shape)}, latents {tuple(latents.shape)}"
            )
        _checks.token_mask("latent_mask", latent_mask, (b, n), "(B, N)")
        out = queries + self.attn_queries_to_latents(
            self.norm_queries(queries), self.norm_latents(latents), context_mask=latent_mask
        )
        out = out + self.ff(self.norm_ff(out))
        return self.to_out(out)  # (B, O, out_dim)


class PerceiverIO(nn.Module):
    """`PerceiverEncoder` then `PerceiverDecoder`: inputs -> latents -> outputs.

    Args:
        input_dim, num_latents, latent_dim, heads, dim_head, depth: as `PerceiverEncoder`.
        query_dim: feature size of the output queries.
        num_outputs: if set, learn `num_outputs` output queries (used when forward gets none).
        out_dim: feature size of the outputs; None keeps query_dim.
        decoder_heads, decoder_dim_head: heads of the decoder's cross-attention.
        **encoder_options: further keyword options of `PerceiverEncoder`
            (cross_heads, num_cross_attends, share_weights, input_chunk_size, ...).

    Shapes: forward(inputs (B, S, input_dim), queries (B, O, query_dim) | (O, query_dim) | None,
    *, input_mask (B, S) bool or None) -> (B, O, out_dim).
    """

    def __init__(
        self,
        input_dim: int,
        *,
        num_latents: int,
        latent_dim: int,
        heads: int,
        dim_head: int,
        depth: int,
        query_dim: int,
        num_outputs: int | None = None,
        out_dim: int | None = None,
        decoder_heads: int = 1,
        decoder_dim_head: int = 64,
        **encoder_options,
    ):
        super().__init__()
        self.encoder = PerceiverEncoder(
            input_dim,
            num_latents=num_latents,
            latent_dim=latent_dim,
            heads=heads,
            dim_head=dim_head,
            depth=depth,
            **encoder_options,
        )
        self.decoder = PerceiverDecoder(
            query_dim,
            latent_dim,
            heads=decoder_heads,
            dim_head=decoder_dim_head,
            out_dim=out_dim,
            dropout=encoder_options.get("dropout", 0.0),
        )
        self.output_queries: nn.Parameter | None = None
        if num_outputs is not None:
            num_outputs = _checks.positive_int(num_outputs, "num_outputs")
            self.output_queries = nn.Parameter(torch.randn(num_outputs, query_dim) * 0.02)

    def forward(
        self, inputs: Tensor, queries: Tensor | None = None, *, input_mask: Tensor | None = None
    ) -> Tensor:
        """Encode the inputs into latents, then decode them at the output queries.

        Args:
            inputs: (B, S, input_dim), S > 0.
            queries: (B, O, query_dim), or (O, query_dim) shared by every batch row; None uses
                the learned output queries (needs ``num_outputs``).
            input_mask: (B, S) bool, True = valid input token (may be attended); None: all
                valid. Padding may hold anything, NaN included.

        Returns:
            (B, O, out_dim).

        Inputs and queries must have the dtype and device of the model's parameters.
        """
        if queries is None and self.output_queries is None:
            raise ValueError(
                "queries=None needs learned output queries: build PerceiverIO with "
                "num_outputs=O, or pass queries (B, O, query_dim)"
            )
        latents = self.encoder(inputs, input_mask)  # (B, N, latent_dim)
        if queries is None:
            queries = self.output_queries.to(inputs.dtype)  # (O, query_dim)
        return self.decoder(queries, latents)
