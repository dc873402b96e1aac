"""A small visual question answering model whose question tokens cross-attend to image patches.

Built from the library's layers: a patch encoder (a stem of `STEMS`: a linear patchify of the
whole patch or of its centre, or a small convolution stem) with 2-D
sinusoidal position encodings and self-attention over the patches, a question encoder
(`TransformerEncoderLayer`), then ``cross_layers`` blocks in which the question tokens attend to
the patches through `crossattn.CrossAttention`, and an answer head. ``readout`` says which tokens
attend and what the head reads: ``"query"`` (the default) prepends one learned query token to the
question, lets only that token (which has read the question in the question encoder) attend to
the patches, and answers from it, so that every bit of the image the answer uses passes through
one attention row per head; ``"mean"`` lets every question token attend and answers from their
mean. The cross-attention maps ``(B, heads, T', P)`` over the ``P = grid * grid`` patches are a
return value (``return_maps=True``), from the same call that computes the answer, with
``map_mask`` ``(B, T')`` saying which rows are real tokens (``T' = 1`` for ``"query"``).

Two options shape where a model trained on answers alone looks. ``local_heads`` heads of every
cross layer key on ``local_stem`` features of their own patch (a linear patchify of the whole
patch, or of its centre: colours, where a patch is), the other heads on the ``stem`` features
(an object's shape, seen from around it); the maps come back with the ``stem``-keyed heads
first. ``centre_answer = k`` adds a second answer head that reads, through
the last layer's ``stem``-keyed heads, only the centre k x k pixels of each patch: trained on the
same answers, it is right only when those heads look at the patches whose middle lies on the
object, which is where the pointing game looks (`VQAOutput.centre_logits`).

Shapes: images (B, 3, H, W) float in [0, 1] with H = W = ``image_size``; question_ids (B, T) long;
question_mask (B, T) bool, True = a real token. Patch ``p`` is row ``p // grid``, column
``p % grid`` of the image.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, asdict, dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from .. import _checks, _cpu
from ..layers._common import FeedForward
from ..layers.attention import CrossAttention
from ..layers.transformer import TransformerEncoderLayer
from .seq2seq import sinusoidal_positions

__all__ = ["VQAConfig", "VQAModel", "VQAOutput", "patch_centres", "patch_positions"]


# the patch stems, `VQAConfig.stem` (and captioning's)
STEMS = ("linear", "centre", "conv", "cnn", "wide")

# the rule of each field that is not a positive int
_RULES: dict[str, Any] = {
    **dict.fromkeys(
        ("text_layers", "image_layers", "pad_id", "local_heads", "centre_answer"),
        _checks.nonnegative_int,
    ),
    "dropout": _checks.probability,
    "stem": lambda value, name: _checks.choice(value, name, STEMS),
    "readout": lambda value, name: _checks.choice(value, name, ("query", "mean")),
    "values": lambda value, name: _checks.choice(value, name, ("stem", "patch", "wide")),
    "local_stem": lambda value, name: _checks.choice(value, name, ("linear", "centre")),
}


@dataclass(frozen=True)
class VQAConfig:
    """Sizes of a `VQAModel`, by the part of the model they size; ``image_size`` must be a
    multiple of ``grid``. Every field after ``n_answers`` is keyword-only."""

    vocab_size: int
    n_answers: int
    _: KW_ONLY
    # the image encoder: patches of a grid x grid split, its stem and self-attention layers
    image_size: int = 64
    grid: int = 8
    stem: Literal["linear", "centre", "conv", "cnn", "wide"] = "linear"
    image_layers: int = 1
    # the cross-attention's values: the key features ("stem"), or features of their own from a
    # linear patchify ("patch") or the wide stem ("wide"), each with the patch positions
    values: Literal["stem", "patch", "wide"] = "stem"
    # the question encoder, then the cross-attention blocks and what the answer head reads
    text_layers: int = 1
    cross_layers: int = 1
    readout: Literal["query", "mean"] = "query"
    # heads keyed on `local_stem` features of their own patch (the others key on `stem`), and the
    # side in pixels of the patch centres an auxiliary answer reads through the last layer's
    # `stem`-keyed heads (0: no auxiliary answer); see the module docstring
    local_heads: int = 0
    local_stem: Literal["linear", "centre"] = "linear"
    centre_answer: int = 0
    # every layer
    d_model: int = 64
    heads: int = 4
    dim_ff: int = 128
    dropout: float = 0.0
    pad_id: int = 0

    def __post_init__(self) -> None:
        # ints may be NumPy or torch integer scalars: each is stored as a plain int
        _checks.dataclass_fields(self, _RULES, _checks.positive_int)
        if self.image_size % self.grid:
            raise ValueError(f"image_size={self.image_size} must be a multiple of grid={self.grid}")
        if self.d_model % self.heads or self.d_model % 4:
            raise ValueError(f"d_model={self.d_model} must divide by heads={self.heads} and by 4")
        patch = self.image_size // self.grid
        convs = [f"{k}={v!r}" for k, v in (("stem", self.stem), ("values", self.values))
                 if v in ("cnn", "wide")]  # fmt: skip
        if convs and (patch < 2 or patch & (patch - 1)):
            raise ValueError(f"{', '.join(convs)} needs image_size / grid to be a power of 2 >= 2, "
                             f"got {self.image_size} / {self.grid} = {patch}")  # fmt: skip
        if self.readout == "query" and self.text_layers < 1:
            raise ValueError("readout='query' needs text_layers >= 1 for the query to read the "
                             f"question, got text_layers={self.text_layers}")  # fmt: skip
        if self.local_heads >= self.heads:
            raise ValueError(f"local_heads={self.local_heads} must be < heads={self.heads}: at "
                             "least one head keys on the stem")  # fmt: skip
        stem_heads = self.heads - self.local_heads
        if self.centre_answer > patch:
            raise ValueError(f"centre_answer={self.centre_answer} must be at most a patch's side "
                             f"(image_size / grid = {patch} pixels)")  # fmt: skip
        if self.centre_answer and self.d_model % stem_heads:
            raise ValueError(f"centre_answer={self.centre_answer} needs the heads keyed on the "
                             f"stem (heads - local_heads = {stem_heads}) to divide "
                             f"d_model={self.d_model}")  # fmt: skip
        if self.pad_id >= self.vocab_size:
            raise ValueError(f"pad_id={self.pad_id} must be < vocab_size={self.vocab_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VQAConfig:
        return cls(**_checks.known_fields(cls, data))


class VQAOutput(NamedTuple):
    """logits (B, n_answers); maps: one (B, heads, T', P) per cross layer, or None; map_mask
    (B, T') bool, True where a row of the maps is a real token (the question mask for readout
    "mean", one True column for readout "query"); centre_logits (B, n_answers): the auxiliary
    answer of ``centre_answer``, None without it."""

    logits: Tensor
    maps: list[Tensor] | None
    map_mask: Tensor
    centre_logits: Tensor | None = None  # (B, n_answers) from the patch centres (centre_answer)


def patch_positions(grid: int, dim: int) -> Tensor:
    """2-D sinusoidal encodings (grid * grid, dim): half the features for rows, half for columns."""
    half = dim // 2
    freqs = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * (-math.log(10000.0) / half))
    pos = torch.arange(grid, dtype=torch.float64)[:, None] * freqs  # (grid, half / 2)
    enc = torch.cat([pos.sin(), pos.cos()], dim=1)  # (grid, half)
    rows = enc[:, None, :].expand(grid, grid, half)
    cols = enc[None, :, :].expand(grid, grid, half)
    return torch.cat([rows, cols], dim=2).reshape(grid * grid, dim).float()


class _Convs(nn.Sequential):
    """The wide stem's 3 x 3 convolutions, run in channels-last memory, whose (B, C, H, W)
    output flattens to patch tokens without a copy. With ``bfloat16_training`` on
    (`VQAModel.train_convolutions_in_bfloat16`, which `train_vqa` calls), a CPU with AMX tiles
    and the module in train mode, they run under bfloat16 autocast and return float32: a training
    step of the guided model took 23.7 ms against 27.9 ms with float32 convolutions, of the
    answers-only model 16.9 against 21.4 (both with the fused AdamW of `train_vqa`; one thread,
    medians of 45 steps side by side). Otherwise, and always in eval mode, they run in float32.

    Only these overlapping convolutions: with PyTorch 2.13 on such a CPU, some bfloat16
    convolutions whose kernel equals their stride (16 input channels at 4, 8 at 8, as a patchify
    has) return wrong numbers, off by the size of the output itself."""

    bfloat16_training = False  # set per module by `VQAModel.train_convolutions_in_bfloat16`

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) float -> (B, C', H', W') in channels-last memory, the input's dtype."""
        x = images.contiguous(memory_format=torch.channels_last)
        fast = self.bfloat16_training and self.training and _cpu.AMX and x.device.type == "cpu"
        if fast and x.dtype == torch.float32:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return super().forward(x).float()
        return super().forward(x)


def _cnn_stem(d_model: int, patch: int) -> nn.Sequential:
    """log2(patch) convolutions of stride 2 (4 x 4, the last 2 x 2), channels doubling up to
    ``d_model``: each patch feature sees the (2 * patch - 2)-pixel square centred on its patch
    (14 pixels for 8-pixel patches) and nothing farther away, so what the answer can learn of an
    object is in the patches on it, not spread over the image."""
    steps = patch.bit_length() - 1
    channels = [3] + [max(8, d_model >> (steps - 1 - k)) for k in range(steps)]
    layers: list[nn.Module] = []
    for k in range(steps):
        last = k == steps - 1
        layers.append(nn.Conv2d(channels[k], channels[k + 1], 2 if last else 4, stride=2,
                                padding=0 if last else 1))  # fmt: skip
        layers.append(nn.GELU())
    return nn.Sequential(*layers[:-1])  # no activation on the features


class _WideStem(nn.Module):
    """log2(patch) 3 x 3 convolutions of stride 2, channels doubling up to ``d_model``, then a
    3 x 3 convolution on the patch grid, plus a linear patchify of the patch's own pixels: each
    patch feature sees a (4 * patch - 1)-pixel square holding its patch (31 pixels for 8-pixel
    patches), enough to tell an object's shape from any patch on it, where a patch of the linear
    stem sees only its own corner of the object; the patchify keeps the patch's own colours one
    linear map away."""

    def __init__(self, d_model: int, patch: int):
        super().__init__()
        steps = patch.bit_length() - 1
        channels = [3] + [max(8, d_model >> (steps - 1 - k)) for k in range(steps)]
        layers: list[nn.Module] = []
        for k in range(steps):
            layers += [nn.Conv2d(channels[k], channels[k + 1], 3, stride=2, padding=1), nn.GELU()]
        self.convs = _Convs(*layers, nn.Conv2d(d_model, d_model, 3, padding=1))
        self.patchify = _stem("linear", d_model, patch)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, d_model, H / patch, W / patch)."""
        return self.convs(images) + self.patchify(images)


def patch_centres(images: Tensor, patch: int, side: int) -> Tensor:
    """(B, C, H, W) -> the centre ``side`` x ``side`` pixels of each ``patch`` x ``patch`` cell,
    (B, P, C * side * side) in (channel, row, column) order; the square starts
    ``(patch - side) // 2`` pixels into its cell (on the centre when the parities agree)."""
    b, ch, height, width = images.shape
    rows, cols, lo = height // patch, width // patch, (patch - side) // 2
    cells = images.reshape(b, ch, rows, patch, cols, patch)
    cells = cells[:, :, :, lo : lo + side, :, lo : lo + side]
    return cells.permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, ch * side * side)


class _CentreStem(nn.Module):
    """A linear map of the centre pixels of each patch (`patch_centres`): a square of about half
    the patch's side, of the patch's parity so that it sits on the patch's centre (4 x 4 of an
    8-pixel patch, 3 x 3 of a 5-pixel one, the whole of a 1- or 2-pixel one). A patch feature
    says what lies around the patch's centre point, which is where the pointing game looks, and
    nothing of the patch's rim."""

    def __init__(self, d_model: int, patch: int):
        super().__init__()
        side = patch // 2
        self.patch, self.side = patch, side + (patch - side) % 2
        self.proj = nn.Linear(3 * self.side * self.side, d_model)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, d_model, H / patch, W / patch)."""
        b, _, height, width = images.shape
        feats = self.proj(patch_centres(images, self.patch, self.side))  # (B, P, d_model)
        return feats.transpose(1, 2).reshape(b, -1, height // self.patch, width // self.patch)


def _stem(kind: str, d_model: int, patch: int) -> nn.Module:
    """The stem named ``kind`` (a `VQAConfig.stem`): images (B, 3, H, W) -> (B, d_model, grid,
    grid)."""
    if kind == "linear":
        return nn.Conv2d(3, d_model, kernel_size=patch, stride=patch)  # = patchify
    if kind == "centre":
        return _CentreStem(d_model, patch)
    if kind == "cnn":
        return _cnn_stem(d_model, patch)
    if kind == "wide":
        return _WideStem(d_model, patch)
    return nn.Sequential(  # "conv"
        nn.Conv2d(3, d_model // 2, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(d_model // 2, d_model, kernel_size=patch, stride=patch),
    )


def _centred(images: Tensor) -> Tensor:
    """Images in [0, 1] -> centred on 0, as every stem and the centre answer read them."""
    return images - 0.5


def _token_mean(x: Tensor, keep: Tensor) -> Tensor:
    """(B, T, d) features, keep (B, T, 1) 1.0 for real tokens -> their mean (B, d)."""
    return (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)


class PatchFeatures(NamedTuple):
    """What `_PatchEncoder` gives the cross-attention, each (B, P, d_model) with the patch
    positions added: keys (the ``stem`` features, after the image layers), values (None for
    ``values="stem"``: the keys serve) and the local heads' keys (None without local heads)."""

    keys: Tensor
    values: Tensor | None
    local: Tensor | None


class _PatchEncoder(nn.Module):
    """Images (B, 3, H, W) -> `PatchFeatures`: patch features with positions and self-attention
    (the keys, and the values for ``values="stem"``), value features with positions from a stem
    of their own for ``values="patch"`` (a linear patchify: each value holds only its patch's
    pixels) or ``"wide"`` (`_WideStem`), and the ``local_stem`` features for the
    ``local_heads``' keys."""

    def __init__(self, c: VQAConfig):
        super().__init__()
        self.grid, patch = c.grid, c.image_size // c.grid
        self.stem = _stem(c.stem, c.d_model, patch)
        self.register_buffer("positions", patch_positions(c.grid, c.d_model), persistent=False)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(c.d_model, heads=c.heads, dim_ff=c.dim_ff, dropout=c.dropout)
            for _ in range(c.image_layers)
        )
        value_stem = {"stem": None, "patch": "linear", "wide": "wide"}[c.values]
        self.value_stem = None if value_stem is None else _stem(value_stem, c.d_model, patch)
        self.local_stem = _stem(c.local_stem, c.d_model, patch) if c.local_heads else None

    def _own(self, stem: nn.Module | None, images: Tensor) -> Tensor | None:
        """A stem's features (B, P, d_model) with the positions; None for no stem."""
        if stem is None:
            return None
        return stem(images).flatten(2).transpose(1, 2) + self.positions

    def forward(self, images: Tensor) -> PatchFeatures:
        images = _centred(images)
        patches = self._own(self.stem, images)  # (B, P, d)
        for layer in self.layers:
            patches = layer(patches)
        return PatchFeatures(
            patches, self._own(self.value_stem, images), self._own(self.local_stem, images)
        )


class _CrossBlock(nn.Module):
    """Pre-norm: tokens + CrossAttention(norm(tokens), norm(patches)); tokens + FFN(norm(tokens)).
    With local heads, two attentions share the queries and the values: ``heads - local_heads``
    heads key on the patch features, ``local_heads`` on the ``local_stem`` features; their
    outputs add up (as one output projection over all heads would) and their maps stack, stem
    heads first."""

    def __init__(self, c: VQAConfig):
        super().__init__()
        dim_head, stem_heads = c.d_model // c.heads, c.heads - c.local_heads
        self.norm_q = nn.LayerNorm(c.d_model)
        self.norm_ctx = nn.LayerNorm(c.d_model)
        self.norm_values = None if c.values == "stem" else nn.LayerNorm(c.d_model)
        self.attn_question_to_image = CrossAttention(
            c.d_model, heads=stem_heads, dim_head=dim_head, dropout=c.dropout
        )
        self.norm_local = nn.LayerNorm(c.d_model) if c.local_heads else None
        self.attn_local = None if not c.local_heads else CrossAttention(
            c.d_model, heads=c.local_heads, dim_head=dim_head, dropout=c.dropout
        )  # fmt: skip
        self.norm_ff = nn.LayerNorm(c.d_model)
        self.ffn = FeedForward(c.d_model, c.dim_ff, dropout=c.dropout)

    def forward(
        self, tokens: Tensor, feats: PatchFeatures, want_map: bool
    ) -> tuple[Tensor, Tensor | None]:
        queries, keys = self.norm_q(tokens), self.norm_ctx(feats.keys)
        values = None if feats.values is None else self.norm_values(feats.values)
        if self.attn_local is None:  # one attention: the values default to the keys
            parts = [(self.attn_question_to_image, keys, values)]
        else:  # both attentions read the same values
            values = keys if values is None else values
            parts = [(self.attn_question_to_image, keys, values),
                     (self.attn_local, self.norm_local(feats.local), values)]  # fmt: skip
        maps = []
        for attn, context, vals in parts:
            out = attn(queries, context, vals, return_weights=want_map)
            out, weights = out if want_map else (out, None)
            tokens = tokens + out
            maps.append(weights)
        weights = (maps[0] if len(maps) == 1 else torch.cat(maps, 1)) if want_map else None
        return tokens + self.ffn(self.norm_ff(tokens)), weights


class _CentreAnswer(nn.Module):
    """The auxiliary answer of ``centre_answer = k``: the centre k x k pixels of each patch, with
    the patch positions, read through given maps (B, h, T, P) of h heads, then pooled over the
    real tokens and mapped to the answers: (B, n_answers)."""

    def __init__(self, c: VQAConfig):
        super().__init__()
        self.patch, self.side = c.image_size // c.grid, c.centre_answer
        self.heads = c.heads - c.local_heads
        self.pixels = nn.Linear(3 * self.side * self.side, c.d_model)
        self.norm_values = nn.LayerNorm(c.d_model)
        self.to_values = nn.Linear(c.d_model, c.d_model)  # d_model / heads features per head
        self.to_out = nn.Linear(c.d_model, c.d_model)
        self.norm_out = nn.LayerNorm(c.d_model)
        self.answer_head = nn.Linear(c.d_model, c.n_answers)

    def forward(self, images: Tensor, positions: Tensor, maps: Tensor, keep: Tensor) -> Tensor:
        """images (B, 3, H, W) centred on 0; positions (P, d); maps (B, h, T, P); keep (B, T, 1)."""
        b, h, t, _ = maps.shape
        centres = patch_centres(images, self.patch, self.side)  # (B, P, 3 * k * k)
        values = self.to_values(self.norm_values(self.pixels(centres) + positions))
        values = values.reshape(b, -1, h, values.shape[-1] // h)  # (B, P, h, dim_head)
        read = self.to_out(torch.einsum("bhtp,bphd->bthd", maps, values).reshape(b, t, -1))
        return self.answer_head(self.norm_out(_token_mean(read, keep)))


class VQAModel(nn.Module):
    """Answer a question about an image; see the module docstring for shapes."""

    def __init__(self, config: VQAConfig):
        super().__init__()
        self.config = c = config
        self.patches = _PatchEncoder(c)
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        if c.readout == "query":
            self.query = nn.Parameter(torch.randn(c.d_model) * 0.02)  # the one token that looks
        self.text_layers = nn.ModuleList(
            TransformerEncoderLayer(c.d_model, heads=c.heads, dim_ff=c.dim_ff, dropout=c.dropout)
            for _ in range(c.text_layers)
        )
        self.cross = nn.ModuleList(_CrossBlock(c) for _ in range(c.cross_layers))
        self.norm_out = nn.LayerNorm(c.d_model)
        self.answer_head = nn.Linear(c.d_model, c.n_answers)
        self.centre_answer = _CentreAnswer(c) if c.centre_answer else None

    def train_convolutions_in_bfloat16(self, enabled: bool = True) -> VQAModel:
        """While in train mode on a CPU with AMX tiles, run the wide stems' 3 x 3 convolutions
        under bfloat16 autocast (float32 out; 15-21% off a training step); off by default,
        and eval mode always runs float32. `train_vqa` turns it on (`VQAOptions.amx_bfloat16`).
        Returns the model."""
        enabled = _checks.boolean(enabled, "enabled")
        for module in self.modules():
            if isinstance(module, _Convs):
                module.bfloat16_training = enabled
        return self

    def _check(self, images: Tensor, question_ids: Tensor, question_mask: Tensor) -> None:
        c = self.config
        want = (3, c.image_size, c.image_size)
        if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != want:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be (B, {want[0]}, {want[1]}, {want[2]}), got {got}")
        b = images.shape[0]
        if (
            question_ids.dim() != 2
            or question_ids.shape[0] != b
            or question_ids.dtype != torch.long
        ):  # noqa: E501
            raise ValueError(
                f"question_ids must be (B={b}, T) long, got {tuple(question_ids.shape)} "
                f"{question_ids.dtype}"
            )
        if question_mask.dtype != torch.bool or question_mask.shape != question_ids.shape:
            raise ValueError(
                f"question_mask must be bool {tuple(question_ids.shape)}, got "
                f"{question_mask.dtype} {tuple(question_mask.shape)}"
            )

    def forward(
        self,
        images: Tensor,
        question_ids: Tensor,
        question_mask: Tensor,
        *,
        return_maps: bool = False,
    ) -> VQAOutput:
        """Answer logits (B, n_answers) and, with ``return_maps``, each cross layer's maps
        (B, heads, T', P) with their ``map_mask`` (B, T'); rows of padded question tokens are
        there but meaningless. With ``centre_answer``, also the auxiliary answer's logits."""
        self._check(images, question_ids, question_mask)
        feats = self.patches(images)  # keys, values, local keys: (B, P, d) each or None
        b, t = question_ids.shape
        tokens = self.embed(question_ids)  # (B, T, d)
        if self.config.readout == "query":
            tokens = torch.cat([self.query.expand(b, 1, -1), tokens], dim=1)  # (B, 1 + T, d)
            question_mask = torch.cat([question_mask.new_ones(b, 1), question_mask], dim=1)
        tokens = tokens + sinusoidal_positions(tokens.shape[1], self.config.d_model).to(tokens)
        for layer in self.text_layers:
            tokens = layer(tokens, token_mask=question_mask)
        if self.config.readout == "query":
            tokens, question_mask = tokens[:, :1], question_mask[:, :1]  # (B, 1, d), (B, 1)
        last = len(self.cross) - 1  # whose map the centre answer reads
        maps = []
        for i, block in enumerate(self.cross):
            want = return_maps or (i == last and self.centre_answer is not None)
            tokens, weights = block(tokens, feats, want)
            maps.append(weights)
        keep = question_mask.unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
        logits = self.answer_head(self.norm_out(_token_mean(tokens, keep)))
        centre = None
        if self.centre_answer is not None:  # through the last layer's stem-keyed heads
            stem_maps = maps[-1][:, : self.centre_answer.heads]
            centre = self.centre_answer(_centred(images), self.patches.positions, stem_maps, keep)
        return VQAOutput(logits, maps if return_maps else None, question_mask, centre)
