"""Segment Anything interop: load its transformer module without the package ``__init__``, and
convert its ``TwoWayTransformer`` (`two_way_from_segment_anything`).

``segment_anything/__init__.py`` imports the predictor and mask generator, which import
torchvision. The two-way transformer needs only torch, so `load_sam_transformer_module` loads
``segment_anything/modeling/transformer.py`` (and the ``common.py`` beside it) from the installed
package's files under a private package name, running no ``__init__``. Convert a module with
`crossattn.TwoWayTransformer.from_segment_anything`.
"""

from __future__ import annotations

import copy
import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..layers.attention import CrossAttention
from ..layers.two_way import TwoWayTransformer

# A private package name, so that no half-initialised ``segment_anything`` enters sys.modules.
_PACKAGE = "_crossattn_segment_anything_modeling"


def sam_modeling_dir() -> Path:
    """The ``segment_anything/modeling`` folder of the installed package (nothing is imported)."""
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "segment_anything is not installed; install it with "
            "`pip install segment-anything==1.0` (crossattn[interop]); torchvision is not needed"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "modeling"
    if not (folder / "transformer.py").is_file():
        raise ImportError(f"no modeling/transformer.py in the segment_anything package at {folder}")
    return folder


def load_sam_transformer_module() -> ModuleType:
    """Return ``segment_anything.modeling.transformer`` loaded from its file, without torchvision.

    The module (with ``TwoWayTransformer``, ``TwoWayAttentionBlock`` and ``Attention``) is loaded
    once under the private package name ``_crossattn_segment_anything_modeling`` and cached in
    ``sys.modules``; its relative import of ``common`` resolves inside that private package.
    Neither ``segment_anything/__init__.py`` nor ``modeling/__init__.py`` runs.

    Example:
        >>> sam = load_sam_transformer_module()
        >>> original = sam.TwoWayTransformer(depth=2, embedding_dim=32, num_heads=4, mlp_dim=64)
        >>> layer = crossattn.TwoWayTransformer.from_segment_anything(original)
    """
    name = f"{_PACKAGE}.transformer"
    if name in sys.modules:
        return sys.modules[name]
    folder = sam_modeling_dir()
    if _PACKAGE not in sys.modules:
        # An empty package whose search path is the modeling folder: submodules load from
        # there, and its __init__.py is never executed.
        spec = importlib.machinery.ModuleSpec(_PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        package = importlib.util.module_from_spec(spec)
        sys.modules[_PACKAGE] = package
    return importlib.import_module(name)


def two_way_from_segment_anything(module: nn.Module) -> TwoWayTransformer:
    """The `TwoWayTransformer` equivalent to a Segment Anything ``TwoWayTransformer`` (see
    `TwoWayTransformer.from_segment_anything`)."""
    _check_sam_layout(module)
    final = module.final_attn_token_to_image
    embedding_dim = int(module.embedding_dim)
    rate = embedding_dim // int(final.internal_dim)
    if embedding_dim // rate != final.internal_dim:
        raise ValueError(
            f"cannot express internal_dim={final.internal_dim} of embedding_dim="
            f"{embedding_dim} as embedding_dim // attention_downsample_rate"
        )
    first = module.layers[0] if len(module.layers) else None
    layer = TwoWayTransformer(
        len(module.layers),
        embedding_dim,
        int(module.num_heads),
        int(first.mlp.lin1.out_features) if first is not None else int(module.mlp_dim),
        attention_downsample_rate=rate,
    )
    ref = final.q_proj.weight
    layer = layer.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        for ours, theirs in zip(layer.layers, module.layers):
            ours.skip_first_layer_pe = bool(theirs.skip_first_layer_pe)
            for name in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
                _copy_sam_attention(getattr(ours, name), getattr(theirs, name))
            for name in ("norm1", "norm2", "norm3", "norm4"):
                _copy_layer_norm(getattr(ours, name), getattr(theirs, name))
            _copy_linear(ours.mlp.linear_in, theirs.mlp.lin1)
            _copy_linear(ours.mlp.linear_out, theirs.mlp.lin2)
            ours.mlp.act = copy.deepcopy(theirs.mlp.act)
        _copy_sam_attention(layer.final_attn_token_to_image, final)
        _copy_layer_norm(layer.norm_final_attn, module.norm_final_attn)
    return layer.train(module.training)


_SAM_BLOCK_ATTRS = (
    "self_attn",
    "cross_attn_token_to_image",
    "cross_attn_image_to_token",
    "mlp",
    "norm1",
    "norm2",
    "norm3",
    "norm4",
    "skip_first_layer_pe",
)
_SAM_ATTENTION_ATTRS = ("q_proj", "k_proj", "v_proj", "out_proj", "num_heads", "internal_dim")


def _check_sam_layout(module: Any) -> None:
    missing = [
        a
        for a in (
            "layers",
            "final_attn_token_to_image",
            "norm_final_attn",
            "embedding_dim",
            "num_heads",
        )
        if not hasattr(module, a)
    ]
    if missing:
        raise TypeError(
            "from_segment_anything expects a segment_anything TwoWayTransformer (attributes "
            f"layers, final_attn_token_to_image, norm_final_attn, ...); {type(module).__name__} "
            f"lacks {missing}"
        )
    attentions = [("final_attn_token_to_image", module.final_attn_token_to_image)]
    for i, block in enumerate(module.layers):
        lacking = [a for a in _SAM_BLOCK_ATTRS if not hasattr(block, a)]
        if lacking:
            raise TypeError(
                f"from_segment_anything: layers[{i}] ({type(block).__name__}) is not a two-way "
                f"attention block; it lacks {lacking}"
            )
        for name in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
            attentions.append((f"layers[{i}].{name}", getattr(block, name)))
    for where, attn in attentions:
        lacking = [a for a in _SAM_ATTENTION_ATTRS if not hasattr(attn, a)]
        if lacking:
            raise TypeError(
                f"from_segment_anything: {where} ({type(attn).__name__}) is not a Segment "
                f"Anything attention; it lacks {lacking}"
            )


def _copy_linear(ours: nn.Linear, theirs: nn.Linear) -> None:
    if ours.weight.shape != theirs.weight.shape:
        raise ValueError(
            f"from_segment_anything: weight shape {tuple(theirs.weight.shape)} does not fit "
            f"{tuple(ours.weight.shape)}"
        )
    ours.weight.copy_(theirs.weight)
    if theirs.bias is None:
        ours.bias.zero_()
    else:
        ours.bias.copy_(theirs.bias)


def _copy_layer_norm(ours: nn.LayerNorm, theirs: nn.LayerNorm) -> None:
    ours.eps = theirs.eps
    if theirs.weight is not None:
        ours.weight.copy_(theirs.weight)
    if theirs.bias is not None:
        ours.bias.copy_(theirs.bias)


def _copy_sam_attention(ours: CrossAttention, theirs: nn.Module) -> None:
    if ours.heads != theirs.num_heads or ours.heads * ours.dim_head != theirs.internal_dim:
        raise ValueError(
            f"from_segment_anything: attention with num_heads={theirs.num_heads}, internal_dim="
            f"{theirs.internal_dim} does not fit heads={ours.heads}, "
            f"internal dim={ours.heads * ours.dim_head}"
        )
    _copy_linear(ours.to_q, theirs.q_proj)
    _copy_linear(ours.to_k, theirs.k_proj)
    _copy_linear(ours.to_v, theirs.v_proj)
    _copy_linear(ours.to_out, theirs.out_proj)
