"""A small image captioning model whose words cross-attend to image patches.

The image side is `crossattn.models.vqa`'s patch encoder (a stem of its `STEMS`, 2-D
sinusoidal positions, ``image_layers`` self-attention layers over the patches). The text side is
a causal decoder of `crossattn.TransformerDecoderLayer` blocks (as in `Seq2SeqTransformer`):
each word attends to the words before it, then to the ``P = grid * grid`` patches, and the
output layer predicts the next word. The cross-attention maps ``(B, heads, T, P)`` of every
decoder layer come from the same call that computes the logits (``return_maps=True``); row
``t`` is where the decoder looks while it predicts word ``t + 1`` of the input (the word after
input ``t``).

Shapes: images (B, 3, H, W) float in [0, 1] with H = W = ``image_size``; tokens (B, T) long,
``bos_id`` first (teacher forcing: the caption shifted right); logits (B, T, vocab_size). Patch
``p`` is row ``p // grid``, column ``p % grid`` of the image.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, asdict, dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from .. import _checks
from ..layers.transformer import TransformerDecoderLayer
from .seq2seq import sinusoidal_positions
from .vqa import STEMS, VQAConfig, _PatchEncoder

__all__ = ["CaptionConfig", "CaptionModel", "CaptionOutput"]

# the rule of each field that is not a positive int
_RULES: dict[str, Any] = {
    **dict.fromkeys(("image_layers", "pad_id", "bos_id", "eos_id"), _checks.nonnegative_int),
    "dropout": _checks.probability,
    "stem": lambda value, name: _checks.choice(value, name, STEMS),
}


@dataclass(frozen=True)
class CaptionConfig:
    """Sizes of a `CaptionModel`; ``image_size`` must be a multiple of ``grid``; ``pad_id``,
    ``bos_id`` and ``eos_id`` are distinct ids below ``vocab_size``. Every field after
    ``vocab_size`` is keyword-only."""

    vocab_size: int
    _: KW_ONLY
    # the image encoder (the VQA model's): patches of a grid x grid split
    image_size: int = 64
    grid: int = 8
    stem: Literal["linear", "centre", "conv", "cnn", "wide"] = "linear"
    image_layers: int = 1
    # the caption decoder
    decoder_layers: int = 2
    max_len: int = 16
    # every layer
    d_model: int = 64
    heads: int = 4
    dim_ff: int = 128
    dropout: float = 0.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        _checks.dataclass_fields(self, _RULES, _checks.positive_int)
        ids = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
        if len(set(ids.values())) != 3 or max(ids.values()) >= self.vocab_size:
            raise ValueError(
                f"pad_id, bos_id and eos_id must be distinct and < vocab_size={self.vocab_size}, "
                f"got {ids}"
            )
        # the encoder's own checks: image_size a multiple of grid, d_model divisible by heads
        # and by 4, the conv stem's patch size
        self.patch_config()

    def patch_config(self) -> VQAConfig:
        """The `VQAConfig` whose patch encoder this model reuses (its text fields unused)."""
        return VQAConfig(
            vocab_size=1, n_answers=1, image_size=self.image_size, grid=self.grid,
            stem=self.stem, image_layers=self.image_layers, d_model=self.d_model,
            heads=self.heads, dim_ff=self.dim_ff, dropout=self.dropout,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionConfig:
        return cls(**_checks.known_fields(cls, data))


class CaptionOutput(NamedTuple):
    """logits (B, T, vocab_size); maps: one (B, heads, T, P) per decoder layer, or None."""

    logits: Tensor
    maps: list[Tensor] | None


class CaptionModel(nn.Module):
    """Describe an image in words; see the module docstring for shapes."""

    def __init__(self, config: CaptionConfig):
        super().__init__()
        if not isinstance(config, CaptionConfig):
            raise TypeError(f"config must be a CaptionConfig, got {type(config).__name__}")
        self.config = c = config
        self.patches = _PatchEncoder(c.patch_config())
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.register_buffer(
            "positions", sinusoidal_positions(c.max_len, c.d_model), persistent=False
        )
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(c.d_model, heads=c.heads, dim_ff=c.dim_ff, dropout=c.dropout)
            for _ in range(c.decoder_layers)
        )
        self.norm_out = nn.LayerNorm(c.d_model)
        self.out = nn.Linear(c.d_model, c.vocab_size)

    def _check_images(self, images: object) -> Tensor:
        c = self.config
        images = _checks.tensor(images, "images", rank=4, legend="(B, 3, H, W)", floating=True)
        want = (3, c.image_size, c.image_size)
        if tuple(images.shape[1:]) != want:
            raise ValueError(
                f"images must be (B, 3, {c.image_size}, {c.image_size}), got "
                f"{_checks.shape_text(images.shape)}"
            )
        return images

    def _check_tokens(self, tokens: object, batch: int) -> Tensor:
        c = self.config
        tokens = _checks.tensor(tokens, "tokens", rank=2, legend="(B, T)", dtype=torch.long)
        if tokens.shape[0] != batch or not 1 <= tokens.shape[1] <= c.max_len:
            raise ValueError(
                f"tokens must be (B={batch}, T) with 1 <= T <= max_len={c.max_len}, got "
                f"{_checks.shape_text(tokens.shape)}"
            )
        _checks.token_ids(tokens, c.vocab_size, "tokens")
        return tokens

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> patch features (B, P, d_model)."""
        return self.patches(self._check_images(images))[0]

    def decode(
        self, patches: Tensor, tokens: Tensor, *, return_maps: bool = False
    ) -> CaptionOutput:
        """Next-word logits (B, T, V) for tokens (B, T) reading patches (B, P, d_model); the
        tokens are trusted (checked by `forward` / `caption`)."""
        t = tokens.shape[1]
        h = self.embed(tokens) + self.positions[:t].to(patches.dtype)
        maps = []
        for layer in self.layers:
            out = layer(h, patches, return_weights=return_maps)
            h = out.tokens
            maps.append(out.cross_weights)
        return CaptionOutput(self.out(self.norm_out(h)), maps if return_maps else None)

    def forward(
        self, images: Tensor, tokens: Tensor, *, return_maps: bool = False
    ) -> CaptionOutput:
        """Teacher-forced logits (B, T, vocab_size) for ``tokens`` (B, T) (``bos_id`` then the
        caption, shifted right) and, with ``return_maps``, each decoder layer's cross-attention
        (B, heads, T, P). Causal: the logits at t depend on tokens[:, :t + 1] only."""
        patches = self.encode(images)
        tokens = self._check_tokens(tokens, patches.shape[0])
        return self.decode(patches, tokens, return_maps=return_maps)

    @torch.no_grad()
    def caption(self, images: Tensor, max_len: int | None = None) -> Tensor:
        """Greedy captions (B, L) of images (B, 3, H, W), without ``bos_id``: each row stops at
        its first ``eos_id`` (kept) and is ``pad_id`` after it; L <= ``max_len`` (default: the
        config's ``max_len - 1``)."""
        c = self.config
        limit = c.max_len - 1 if max_len is None else _checks.positive_int(max_len, "max_len")
        if limit > c.max_len - 1:
            raise ValueError(f"max_len must be <= {c.max_len - 1} (the config's max_len - 1), "
                             f"got {limit}")  # fmt: skip
        patches = self.encode(images)
        b = patches.shape[0]
        tokens = torch.full((b, 1), c.bos_id, dtype=torch.long, device=patches.device)
        done = torch.zeros(b, dtype=torch.bool, device=patches.device)
        for _ in range(limit):
            nxt = self.decode(patches, tokens).logits[:, -1].argmax(-1)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, c.pad_id), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            done |= nxt == c.eos_id
            if bool(done.all()):
                break
        return tokens[:, 1:]
