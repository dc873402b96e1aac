"""Segment Anything's two-way transformer: prompt tokens and image tokens attend to each other.

Each block runs four steps: (1) the prompt tokens self-attend, (2) the tokens cross-attend to the
image, (3) an MLP on the tokens, (4) the image cross-attends to the tokens. Positional encodings
are added to the queries and keys of every attention, never to the values. A final
token-to-image attention and a LayerNorm close the transformer.

Shapes: image_embedding and image_pe (B, C, H, W) with C = embedding_dim; point_embedding
(B, N, C). Inside, the image is a sequence of H*W tokens (B, H*W, C). Every attention is a
`CrossAttention` (and so `crossattn.cross_attention`): queries, keys and values projected to an
internal size ``embedding_dim // attention_downsample_rate`` split over ``num_heads`` heads.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._common import (
    FeedForward,
    check_features,
    check_like_params,
    check_mask,
    check_nonempty,
    check_nonnegative,
    check_positive,
)
from .attention import CrossAttention


def _sam_attention(
    embedding_dim: int, num_heads: int, downsample_rate: int, backend: str | None
) -> CrossAttention:
    """The attention of Segment Anything: q/k/v/out projections with biases, internal dim
    ``embedding_dim // downsample_rate``; keys and values come from separate inputs."""
    internal_dim = embedding_dim // downsample_rate
    if downsample_rate == 1 and embedding_dim % num_heads != 0:
        raise ValueError(f"num_heads={num_heads} must divide embedding_dim={embedding_dim}")
    if internal_dim <= 0 or internal_dim % num_heads != 0:
        raise ValueError(
            f"embedding_dim // attention_downsample_rate = {embedding_dim} // {downsample_rate} "
            f"= {internal_dim} must be a positive multiple of num_heads={num_heads}"
        )
    return CrossAttention(
        embedding_dim,
        embedding_dim,
        embedding_dim,
        heads=num_heads,
        dim_head=internal_dim // num_heads,
        bias=True,
        out_bias=True,
        backend=backend,
    )


class TwoWayAttentionBlock(nn.Module):
    """One block of the two-way transformer: token self-attention, token-to-image attention,
    MLP, image-to-token attention, each followed by a residual add and a LayerNorm (post-norm).

    Args:
        embedding_dim: channels C of tokens and image.
        num_heads: heads of every attention.
        mlp_dim: hidden size of the token MLP.
        activation: activation class of the MLP (instantiated without arguments).
        attention_downsample_rate: the two cross-attentions project to
            ``embedding_dim // attention_downsample_rate`` channels inside; the self-attention
            keeps ``embedding_dim``.
        skip_first_layer_pe: the first block of Segment Anything: the self-attention gets no
            positional encoding and no residual (its output replaces the tokens).
        backend: pin a backend of `crossattn.cross_attention` for every attention (None: dispatch).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        *,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
        backend: str | None = None,
    ):
        super().__init__()
        embedding_dim, num_heads, mlp_dim, attention_downsample_rate = check_positive(
            embedding_dim=embedding_dim, num_heads=num_heads, mlp_dim=mlp_dim,
            attention_downsample_rate=attention_downsample_rate,
        )  # fmt: skip
        self.embedding_dim = embedding_dim
        self.self_attn = _sam_attention(embedding_dim, num_heads, 1, backend)
        self.self_attn.role = "self"
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = _sam_attention(
            embedding_dim, num_heads, attention_downsample_rate, backend
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = FeedForward(embedding_dim, mlp_dim, activation=activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = _sam_attention(
            embedding_dim, num_heads, attention_downsample_rate, backend
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        query_pe: Tensor,
        key_pe: Tensor,
        *,
        query_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Update the tokens and the image tokens.

        Args:
            queries: prompt tokens (B, N, C).
            keys: image tokens (B, HW, C).
            query_pe: positional encoding of the tokens (B, N, C).
            key_pe: positional encoding of the image tokens (B, HW, C).
            query_mask: (B, N) bool, True = real token, False = padding. Padded tokens are never
                attended to (by the tokens or by the image); their own outputs are unspecified.

        Returns:
            ``(queries (B, N, C), keys (B, HW, C))``.

        N and HW must be > 0 (tokens and image attend to each other); query_pe and key_pe may
        have a batch size of 1, or no batch dimension ((N, C), (HW, C)), to be shared by the
        batch. Every input must have the dtype and device of the block's parameters.
        """
        query_pe, key_pe = (pe[None] if isinstance(pe, Tensor) and pe.dim() == 2 else pe
                            for pe in (query_pe, key_pe))  # fmt: skip
        _check_block_inputs(self, queries, keys, query_pe, key_pe, query_mask)
        # Self-attention of the tokens
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, context_mask=query_mask)
        else:
            q = queries + query_pe
            attn_out = self.self_attn(q, q, queries, context_mask=query_mask)
            queries = queries + attn_out
        queries = self.norm1(queries)

        # Cross-attention from the tokens to the image
        q = queries + query_pe
        k = keys + key_pe
        attn_out = self.cross_attn_token_to_image(q, k, keys)  # (B, N, C)
        queries = self.norm2(queries + attn_out)

        # MLP on the tokens
        queries = self.norm3(queries + self.mlp(queries))

        # Cross-attention from the image to the tokens
        q = queries + query_pe
        k = keys + key_pe
        attn_out = self.cross_attn_image_to_token(k, q, queries, context_mask=query_mask)
        keys = self.norm4(keys + attn_out)  # (B, HW, C)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Segment Anything's two-way transformer decoder over an image and prompt tokens.

    Args:
        depth: number of `TwoWayAttentionBlock`s; the first skips the positional encoding in its
            self-attention, as in Segment Anything.
        embedding_dim: channels C of the image embedding and the tokens.
        num_heads: heads of every attention; must divide
            ``embedding_dim // attention_downsample_rate``.
        mlp_dim: hidden size of the token MLP.
        attention_downsample_rate: internal size of the cross-attentions is
            ``embedding_dim // attention_downsample_rate``.
        activation: activation class of the MLP.
        backend: pin a backend of `crossattn.cross_attention` for every attention (None: dispatch).

    Example:
        >>> t = TwoWayTransformer(depth=2, embedding_dim=32, num_heads=4, mlp_dim=64)
        >>> image, pe = torch.randn(1, 32, 8, 8), torch.randn(1, 32, 8, 8)
        >>> tokens, image_tokens = t(image, pe, torch.randn(1, 5, 32))
        >>> tokens.shape, image_tokens.shape
        (torch.Size([1, 5, 32]), torch.Size([1, 64, 32]))
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        attention_downsample_rate: int = 2,
        activation: type[nn.Module] = nn.ReLU,
        backend: str | None = None,
    ):
        super().__init__()
        (depth,) = check_nonnegative(depth=depth)
        embedding_dim, num_heads, mlp_dim, attention_downsample_rate = check_positive(
            embedding_dim=embedding_dim, num_heads=num_heads, mlp_dim=mlp_dim,
            attention_downsample_rate=attention_downsample_rate,
        )  # fmt: skip
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.attention_downsample_rate = attention_downsample_rate
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
                backend=backend,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = _sam_attention(
            embedding_dim, num_heads, attention_downsample_rate, backend
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def extra_repr(self) -> str:
        return (
            f"depth={self.depth}, embedding_dim={self.embedding_dim}, num_heads={self.num_heads}, "
            f"mlp_dim={self.mlp_dim}, attention_downsample_rate={self.attention_downsample_rate}"
        )

    def forward(
        self,
        image_embedding: Tensor,
        image_pe: Tensor,
        point_embedding: Tensor,
        *,
        point_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the blocks and the final token-to-image attention.

        Args:
            image_embedding: (B, C, H, W).
            image_pe: positional encoding of the image, (B, C, H, W) or (1, C, H, W) for all rows.
            point_embedding: prompt tokens (B, N, C); they are also their own positional encoding
                at every step, as in Segment Anything.
            point_mask: (B, N) bool, True = real token. Padding tokens are never attended to;
                their rows of the output are unspecified (an option Segment Anything lacks).

        Returns:
            ``(queries (B, N, C), keys (B, H*W, C))``: the processed tokens and image tokens.
        """
        c = self.embedding_dim
        weight = self.norm_final_attn.weight
        for name, t in (("image_embedding", image_embedding), ("image_pe", image_pe)):
            if not isinstance(t, Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor (B, C, H, W), got {type(t).__name__}"
                )
            if t.dim() != 4 or t.shape[1] != c:
                raise ValueError(
                    f"{name} must have shape (B, C, H, W) with C = embedding_dim = {c}, got "
                    f"{tuple(t.shape)}"
                )
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
            check_like_params(name, t, weight)
        b, _, h, w = image_embedding.shape
        if image_pe.shape[0] not in (1, b) or image_pe.shape[2:] != image_embedding.shape[2:]:
            raise ValueError(
                f"image_pe must have shape (B, C, H, W) = ({b}, {c}, {h}, {w}) or (1, {c}, {h}, "
                f"{w}), got {tuple(image_pe.shape)}"
            )
        check_nonempty(
            "image_embedding",
            h * w,
            image_embedding.shape,
            f"H*W = {h}*{w} = 0 positions",
            "pass an image of at least one position",
        )
        check_features("point_embedding", point_embedding, c, "(B, N, C)", like=weight)
        if point_embedding.shape[0] != b:
            raise ValueError(
                f"point_embedding must have shape (B, N, C) = ({b}, N, {c}), got "
                f"{tuple(point_embedding.shape)}"
            )
        n = point_embedding.shape[1]
        check_nonempty(
            "point_embedding",
            n,
            point_embedding.shape,
            "N=0 tokens",
            "the image attends to the prompt tokens, so pass at least one per row (pad rows with "
            "fewer prompts and mark the padding False in point_mask)",
        )
        check_mask("point_mask", point_mask, (b, n), "(B, N)")

        keys = image_embedding.flatten(2).transpose(1, 2)  # (B, H*W, C)
        key_pe = image_pe.flatten(2).transpose(1, 2).expand(b, h * w, c)  # (B, H*W, C)
        queries = point_embedding  # (B, N, C)
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe, query_mask=point_mask)

        # Final attention from the tokens to the image
        q = queries + point_embedding
        k = keys + key_pe
        attn_out = self.final_attn_token_to_image(q, k, keys)  # (B, N, C)
        queries = self.norm_final_attn(queries + attn_out)
        return queries, keys

    @classmethod
    def from_segment_anything(cls, module: nn.Module) -> TwoWayTransformer:
        """Build the equivalent layer from a Segment Anything ``TwoWayTransformer``.

        The module is recognised by its attributes (``layers``, ``final_attn_token_to_image``,
        ``norm_final_attn``, and in each block ``self_attn``, ``cross_attn_token_to_image``,
        ``mlp``, ``cross_attn_image_to_token``, ``norm1`` to ``norm4``), so it may come from any
        copy of ``segment_anything.modeling.transformer``, loaded however the caller likes (see
        `crossattn.integrations.segment_anything.load_sam_transformer_module`). Weights, the
        LayerNorm epsilons, the MLP activation and each block's ``skip_first_layer_pe`` are
        copied; the result has the module's device, dtype and train/eval mode and gives the same
        outputs.
        """
        from ..integrations.segment_anything import two_way_from_segment_anything

        return two_way_from_segment_anything(module)


def _check_block_inputs(
    block: TwoWayAttentionBlock,
    queries: Tensor,
    keys: Tensor,
    query_pe: Tensor,
    key_pe: Tensor,
    query_mask: Tensor | None,
) -> None:
    """The inputs of `TwoWayAttentionBlock.forward`, with errors naming the argument."""
    c, weight = block.embedding_dim, block.norm1.weight
    check_features("queries", queries, c, "(B, N, C)", like=weight)
    check_features("keys", keys, c, "(B, HW, C)", like=weight)
    b, n, hw = queries.shape[0], queries.shape[1], keys.shape[1]
    if keys.shape[0] != b:
        raise ValueError(
            f"keys have B={keys.shape[0]} but queries have B={b}: queries "
            f"{tuple(queries.shape)}, keys {tuple(keys.shape)}"
        )
    for name, pe, of, length, legend in (
        ("query_pe", query_pe, "queries", n, "N"),
        ("key_pe", key_pe, "keys", hw, "HW"),
    ):
        check_features(name, pe, c, f"(B, {legend}, C)", like=weight)
        if pe.shape[0] not in (1, b) or pe.shape[1] != length:
            shared = "" if b == 1 else f" or (1, {length}, {c}) for all rows"
            raise ValueError(
                f"{name} must hold one positional encoding per token of {of}: shape "
                f"(B, {legend}, C) = ({b}, {length}, {c}){shared}, got {tuple(pe.shape)}"
            )
    check_nonempty(
        "queries",
        n,
        queries.shape,
        "N=0 tokens",
        "the image attends to the tokens, so pass at least one per row (mark padding False "
        "in query_mask)",
    )
    check_nonempty("keys", hw, keys.shape, "HW=0 tokens", "pass at least one image token")
    check_mask("query_mask", query_mask, (b, n), "(B, N)")
