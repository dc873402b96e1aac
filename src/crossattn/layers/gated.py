"""`GatedCrossAttentionBlock`: Flamingo's tanh-gated cross-attention from text to media.

Media layout. The media of a batch row are T items (images, clips) of n tokens each, given either
as ``media (B, T, n, context_dim)`` or flattened as ``media (B, M, context_dim)`` with M = T * n,
item t holding tokens ``[t * n, (t + 1) * n)`` (then pass ``tokens_per_media=n``).
``media_locations (B, L)`` bool is True at each text position where a media item appears (its
``<image>`` token), in order: the k-th True of a row is item k - 1 of that row. A row may show
fewer than T items (the rest is padding, never attended); more than T is an error.

Each text token sees the items that appeared at or before it: only the most recent one
(``only_attend_immediate_media=True``, Flamingo's default) or all of them. A text token before
the first item (or whose media tokens are all masked) attends to nothing: its attention update
is exactly 0, so the block passes it through (plus the gated feed-forward). Without ``media_locations`` every text token attends to
all media tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import _checks
from ._common import (
    FeedForward,
    check_features,
    check_like_params,
    check_nonempty,
)
from .attention import CrossAttention


def media_attention_mask(
    media_locations: Tensor, num_media: int, tokens_per_media: int, *, only_immediate: bool = True
) -> Tensor:
    """Bool (B, L, num_media * tokens_per_media), True where a text token may attend a media token.

    Args:
        media_locations: (B, L) bool, True where a media item appears in the text.
        num_media: T, the media items held per row.
        tokens_per_media: n, the tokens of each item.
        only_immediate: attend only the most recent item (True) or all previous items (False).
    """
    text_time = media_locations.long().cumsum(dim=-1)  # (B, L): items seen so far, 1-based
    media_time = torch.arange(1, num_media + 1, device=media_locations.device)
    media_time = media_time.repeat_interleave(tokens_per_media)  # (M,)
    if only_immediate:
        return text_time[:, :, None] == media_time[None, None, :]  # (B, L, M)
    return text_time[:, :, None] >= media_time[None, None, :]  # (B, L, M)


class GatedCrossAttentionBlock(nn.Module):
    """Text attends to media through tanh gates that start at 0 (identity at initialisation).

    text <- text + tanh(attn_gate) * attn(norm(text) -> media)
    text <- text + tanh(ff_gate) * ff(norm(text))

    Args:
        dim: feature size of the text.
        context_dim: feature size of the media tokens.
        heads, dim_head: attention heads.
        ff_mult: hidden size of the feed-forward, as a multiple of dim.
        only_attend_immediate_media: each text token attends only to the most recent media item
            (True) or to all media items that appeared before it (False).
        dropout: dropout on attention probabilities and in the feed-forward.
        backend: backend of the attention (None: dispatch).

    See the module docstring for the media layout and ``media_locations``.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        *,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: int = 4,
        only_attend_immediate_media: bool = True,
        dropout: float = 0.0,
        backend: str | None = None,
    ):
        super().__init__()
        dim, context_dim, heads, dim_head, ff_mult = _checks.positive_ints(
            dim=dim, context_dim=context_dim, heads=heads, dim_head=dim_head, ff_mult=ff_mult
        )
        self.dim, self.context_dim = dim, context_dim
        self.only_attend_immediate_media = only_attend_immediate_media
        self.norm_attn = nn.LayerNorm(dim)
        self.attn_text_to_media = CrossAttention(
            dim, context_dim, heads=heads, dim_head=dim_head, dropout=dropout, backend=backend
        )
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dim * ff_mult, dropout=dropout)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(
        self,
        text: Tensor,
        media: Tensor,
        *,
        media_locations: Tensor | None = None,
        tokens_per_media: int | None = None,
        media_mask: Tensor | None = None,
    ) -> Tensor:
        """Args:
            text: (B, L, dim).
            media: (B, T, n, context_dim), or (B, M, context_dim) with M = T * n.
            media_locations: (B, L) bool, True where a media item appears; None lets every
                text token attend to every media token.
            tokens_per_media: n, needed with flattened media and media_locations.
            media_mask: (B, M) bool, True = valid media token (padding may hold NaN).

        Returns:
            (B, L, dim).

        Text and media must have the dtype and device of the block's parameters. Media must
        hold at least one token (M > 0); a row without media takes a dummy item whose
        media_mask is all False.
        """
        check_features("text", text, self.dim, "(B, L, dim)", like=self.norm_attn.weight)
        b, length, _ = text.shape
        given = media
        empty = "M=0 tokens"
        if isinstance(media, Tensor) and media.dim() == 4:
            empty = f"T={media.shape[1]} items of n={media.shape[2]} tokens"
            if tokens_per_media is not None and tokens_per_media != media.shape[2]:
                raise ValueError(
                    f"tokens_per_media={tokens_per_media} contradicts media (B, T, n, "
                    f"context_dim) = {tuple(media.shape)}"
                )
            num_media, tokens_per_media = media.shape[1], media.shape[2]
            media = media.flatten(1, 2)  # (B, T, n, D) -> (B, T*n, D)
        else:
            num_media = None
        check_features(
            "media", media, self.context_dim, "(B, M, context_dim) or (B, T, n, context_dim)"
        )
        check_like_params("media", media, self.attn_text_to_media.to_k.weight)
        check_nonempty(
            "media",
            media.shape[1],
            given.shape,
            empty,
            "pass at least one media token per row; for rows without media pass a dummy item "
            "with media_mask False on its tokens (their text then gets an attention update of 0)",
        )
        if media.shape[0] != b:
            raise ValueError(
                f"media have B={media.shape[0]} but text has B={b}: media {tuple(media.shape)}, "
                f"text {tuple(text.shape)}"
            )
        m = media.shape[1]
        _checks.token_mask("media_mask", media_mask, (b, m), "(B, M)")
        attn_mask = None
        if media_locations is not None:
            _checks.token_mask("media_locations", media_locations, (b, length), "(B, L)")
            if num_media is None:
                if tokens_per_media is None:
                    raise ValueError(
                        "media_locations with flattened media (B, M, context_dim) needs "
                        "tokens_per_media=n; or pass media as (B, T, n, context_dim)"
                    )
                tokens_per_media = _checks.positive_int(tokens_per_media, "tokens_per_media")
                if m % tokens_per_media != 0:
                    raise ValueError(
                        f"media (B, M, context_dim) = {tuple(media.shape)} has M={m}, not a "
                        f"multiple of tokens_per_media={tokens_per_media}"
                    )
                num_media = m // tokens_per_media
            shown = int(media_locations.sum(dim=-1).max()) if length else 0
            if shown > num_media:
                raise ValueError(
                    f"media_locations marks {shown} media items in a row but media holds "
                    f"T={num_media} per row"
                )
            attn_mask = media_attention_mask(
                media_locations,
                num_media,
                tokens_per_media,
                only_immediate=self.only_attend_immediate_media,
            )  # (B, L, M)
        attended = self.attn_text_to_media(
            self.norm_attn(text), media, context_mask=media_mask, attn_mask=attn_mask
        )
        allowed = attn_mask
        if media_mask is not None:
            mm = media_mask[:, None, :]  # (B, 1, M)
            allowed = mm if allowed is None else allowed & mm
        if allowed is not None:
            # No media to attend to: no attention update (not even the output bias).
            attended = attended.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)
        text = text + self.attn_gate.tanh() * attended
        return text + self.ff_gate.tanh() * self.ff(self.norm_ff(text))
