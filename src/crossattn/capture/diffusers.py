"""Text-to-image maps from diffusers models (e.g. ``UNet2DConditionModel``), by forward hooks.

Every diffusers ``Attention`` module called with ``encoder_hidden_states`` (the cross-attention
``attn2`` of each transformer block) is hooked, whatever attention processor it runs: the hook
recomputes the maps through the op from the module's own projections of its inputs. Each model
call (one denoising timestep, with both halves of a classifier-free-guidance batch) is one
recorded call; its maps are (B, h*w, S): image positions (row-major) over text tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..integrations.diffusers_attention import DiffusersAttention
from ._signature import claimed_cross_call
from .recompute import recompute_weights

KIND = "diffusers"


def matches(module: nn.Module) -> bool:
    return all(
        hasattr(module, a) for a in ("to_q", "to_k", "heads", "processor", "prepare_attention_mask")
    )


def make_hook(recorder: Any, name: str):
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        found = claimed_cross_call(recorder, name, KIND, module, args, kwargs,
                                   "encoder_hidden_states")  # fmt: skip
        if found is None:
            return
        call, claim = found
        if getattr(module, "spatial_norm", None) is not None:
            raise ValueError(
                f"layer {name!r}: recording diffusers attention with a spatial_norm is not "
                "supported; leave it out with layers="
            )
        read = DiffusersAttention(module)
        hidden = call["hidden_states"]
        image_hw = None
        with torch.no_grad():
            if hidden.dim() == 4:
                b, c, height, width = hidden.shape
                image_hw = (height, width)
                hidden = hidden.view(b, c, height * width).transpose(1, 2)  # (B, h*w, C)
            q = read.project_queries(read.normed_hidden(hidden))  # (B, heads, L, D)
            context = call["encoder_hidden_states"]
            projected = recorder._project_once(
                module, context, lambda ctx: module.to_k(read.normed_context(ctx))
            )  # (B, S, kv_heads * D)
            k = read.split_keys(projected)  # (B, kv_heads, S, D)
        b, s = q.shape[0], k.shape[2]
        attn_mask = call.get("attention_mask")
        if attn_mask is not None:
            attn_mask = read.attention_mask(attn_mask, s, b)  # (B, heads, L|1, S)
        weights = recompute_weights(
            q, k, heads=recorder.heads, scale=read.scale, attn_mask=attn_mask
        )
        recorder._store(claim, weights, heads_done=True, image_hw=image_hw)

    return hook
