"""Maps from Hugging Face transformers encoder-decoder models, by forward hooks.

The decoder's cross-attention modules keep their own attention implementation (SDPA by
default, which returns no maps); a hook recomputes each call's maps through the op from the
module's inputs: its query projection of the hidden states, and the keys projected from the
encoder hidden states (projected once per encoder output and reused at every decode step).

Two module families are recognised by their attributes, so every model built on them works:
- BART-like (``q_proj``, ``k_proj``, ``num_heads``, ``head_dim``, ``scaling``): BART, mBART,
  Marian, Pegasus, Blenderbot, M2M-100/NLLB, Whisper and others;
- T5-like (``q``, ``k``, ``n_heads``, ``key_value_proj_dim``): T5, mT5 and others, with the
  ``position_bias`` the module returns added to the scores.
A call is a cross-attention call when it gets ``key_value_states``; self-attention calls of the
same classes are not recorded.

During ``generate()`` each decoder call (the prompt, then one call per new token) is one
recorded call, with one row per sequence in that call's batch: batch * num_beams rows in beam
search, in the order of that step's beams (see `AttentionRecorder.follow_beams`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._signature import claimed_cross_call
from .recompute import merge_masks, recompute_weights

BART = "transformers:bart-like"
T5 = "transformers:t5-like"


def family(module: nn.Module) -> str | None:
    if all(hasattr(module, a) for a in ("q_proj", "k_proj", "num_heads", "head_dim", "scaling")):
        return BART
    if all(hasattr(module, a) for a in ("q", "k", "o", "n_heads", "key_value_proj_dim")):
        return T5
    return None


def matches(module: nn.Module) -> bool:
    return family(module) is not None


def make_hook(recorder: Any, name: str):
    kind = None

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        nonlocal kind
        kind = kind or family(module)
        found = claimed_cross_call(recorder, name, kind, module, args, kwargs, "key_value_states")
        if found is None:
            return
        call, claim = found
        context = call["key_value_states"]
        hidden = call["hidden_states"]
        if kind == BART:
            to_q, to_k, head_dim, scale = (
                module.q_proj,
                module.k_proj,
                module.head_dim,
                module.scaling,
            )
        else:
            to_q, to_k = module.q, module.k
            head_dim, scale = module.key_value_proj_dim, getattr(module, "scaling", 1.0)
        with torch.no_grad():
            b, length, _ = hidden.shape
            q = to_q(hidden).view(b, length, -1, head_dim).transpose(1, 2)  # (B, H, L, D)
            k = recorder._project_once(module, context, to_k)  # (B, S, Hk * D)
            k = k.view(b, k.shape[1], -1, head_dim).transpose(1, 2)  # (B, Hk, S, D)
        mask = call.get("attention_mask", call.get("mask"))
        bias = None
        if kind == T5 and isinstance(output, tuple) and len(output) > 1:
            bias = output[1]  # (1|B, H, L, S) additive position bias
        attn_mask, key_mask = _masks(mask, bias, q.dtype)
        weights = recompute_weights(
            q, k, heads=recorder.heads, scale=float(scale), attn_mask=attn_mask, key_mask=key_mask
        )
        recorder._store(claim, weights, heads_done=True)

    return hook


def _masks(
    mask: Tensor | None, bias: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None]:
    """transformers' masks -> (attn_mask, key_mask) in crossattn's convention.

    transformers passes None, a boolean (B, 1, L|1, S) mask with True = may attend, an additive
    float (B, 1, L|1, S) mask, or (flash attention) a (B, S) padding mask with 1 = valid.
    """
    key_mask = attn_mask = None
    if mask is not None:
        if mask.dim() == 2:
            key_mask = mask.bool()  # (B, S)
        elif mask.dtype == torch.bool:
            attn_mask = mask
        else:
            attn_mask = mask.to(dtype)
    if bias is not None:
        attn_mask = merge_masks(bias.detach().to(dtype), attn_mask)
    return attn_mask, key_mask
