"""Bridges to the libraries whose cross-attention crossattn reproduces: every conversion lives
here, and the layers' ``from_*`` class methods import it lazily.

- `crossattn.integrations.torch_mha`: `CrossAttention.from_torch` for
  `torch.nn.MultiheadAttention`.
- `crossattn.integrations.segment_anything`: `TwoWayTransformer.from_segment_anything`, and a
  loader of Segment Anything's transformer module without its package ``__init__`` (which
  needs torchvision).
- `crossattn.integrations.diffusers`: `CrossAttention.from_diffusers` and `CrossAttnProcessor`,
  a diffusers attention processor that runs through `crossattn.cross_attention`; both read
  diffusers' ``Attention`` through `crossattn.integrations.diffusers_attention`, as the
  recorder's diffusers hook does.
- `crossattn.integrations.transformers`: `CrossAttention.from_transformers` for BERT's
  cross-attention.

The converters read the attributes of the module they are given, so diffusers, transformers and
segment_anything are never imported here (the Segment Anything loader reads its files on call).
"""
