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
from torch import Tensor, nn

from ._signature import call_arguments
from .recompute import recompute_weights

KIND = "diffusers"


def matches(module: nn.Module) -> bool:
    return all(
        hasattr(module, a) for a in ("to_q", "to_k", "heads", "processor", "prepare_attention_mask")
    )


def make_hook(recorder: Any, name: str):
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        call = call_arguments(module, args, kwargs)
        context = call.get("encoder_hidden_states")
        if context is None:
            return  # self-attention: not recorded
        claim = recorder._claim(name, KIND)
        if claim is None:
            return
        if getattr(module, "spatial_norm", None) is not None:
            raise ValueError(
                f"layer {name!r}: recording diffusers attention with a spatial_norm is not "
                "supported; leave it out with layers="
            )
        hidden = call["hidden_states"]
        image_hw = None
        with torch.no_grad():
            if hidden.dim() == 4:
                b, c, height, width = hidden.shape
                image_hw = (height, width)
                hidden = hidden.view(b, c, height * width).transpose(1, 2)  # (B, h*w, C)
            if getattr(module, "group_norm", None) is not None:
                hidden = module.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
            b, length, _ = hidden.shape
            heads = module.heads
            q = module.to_q(hidden)  # (B, L, heads * D)
            q = q.view(b, length, heads, -1).transpose(1, 2)  # (B, heads, L, D)

            def project(ctx: Tensor) -> Tensor:
                if getattr(module, "norm_cross", None):
                    ctx = module.norm_encoder_hidden_states(ctx)
                return module.to_k(ctx)

            k = recorder._project_once(module, context, project)  # (B, S, heads * D)
            s = k.shape[1]
            k = k.view(b, s, heads, -1).transpose(1, 2)  # (B, heads, S, D)
            if getattr(module, "norm_q", None) is not None:
                q = module.norm_q(q)
            if getattr(module, "norm_k", None) is not None:
                k = module.norm_k(k)
        attn_mask = call.get("attention_mask")
        if attn_mask is not None:
            attn_mask = module.prepare_attention_mask(attn_mask, s, b)  # (B*heads, L|1, S)
            attn_mask = attn_mask.view(b, heads, -1, attn_mask.shape[-1])  # (B, heads, L|1, S)
        scale = float(getattr(module, "scale", q.shape[-1] ** -0.5))
        weights = recompute_weights(q, k, heads=recorder.heads, scale=scale, attn_mask=attn_mask)
        recorder._store(claim, weights, heads_done=True, image_hw=image_hw)

    return hook
