"""Bridges to the libraries whose cross-attention crossattn reproduces.

- `crossattn.integrations.segment_anything`: load Segment Anything's transformer module without
  its package ``__init__`` (which needs torchvision); see `TwoWayTransformer.from_segment_anything`.
- `crossattn.integrations.diffusers`: `CrossAttention.from_diffusers` and `CrossAttnProcessor`,
  a diffusers attention processor that runs through `crossattn.cross_attention`.
- `crossattn.integrations.transformers`: `CrossAttention.from_transformers` for BERT's
  cross-attention.

Each submodule imports its library only when a function of it is called; importing this package
imports none of them.
"""
