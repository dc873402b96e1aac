"""`crossattn demo`: a short showcase of the op and the layer that prints a table."""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per backend")


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def run(args: argparse.Namespace) -> int:
    import torch

    import crossattn
    from crossattn import CrossAttention, cross_attention

    torch.manual_seed(0)
    b, h, length, s, e = 2, 8, 1024, 77, 64
    q = torch.randn(b, h, length, e)
    k = torch.randn(b, h, s, e)
    v = torch.randn(b, h, s, e)
    key_mask = torch.ones(b, s, dtype=torch.bool)
    key_mask[1, 50:] = False  # the second prompt is shorter
    exact = cross_attention(
        q.double(), k.double(), v.double(), key_mask=key_mask, backend="reference"
    )
    print(
        f"cross_attention: query (B={b}, H={h}, L={length}, E={e}) over a context of S={s} tokens"
    )
    print(f"{'backend':<10} {'dtype':<9} {'max error vs float64':>21} {'median ms':>10}")
    for dtype in (torch.float32, torch.bfloat16):
        for name in crossattn.available_backends():
            args_ = (q.to(dtype), k.to(dtype), v.to(dtype))

            def call(name=name, args_=args_):
                return cross_attention(*args_, key_mask=key_mask, backend=name)

            err = (call().double() - exact).abs().max().item()
            ms = _median_ms(call, args.repeats)
            print(f"{name:<10} {str(dtype).removeprefix('torch.'):<9} {err:>21.2e} {ms:>10.2f}")
    layer = CrossAttention(query_dim=320, context_dim=768, heads=8, dim_head=40)
    image = torch.randn(b, 4096, 320)
    text = torch.randn(b, s, 768)
    with torch.no_grad():
        prepared = layer.prepare_context(text, context_mask=key_mask)
        out, weights = layer(image, prepared, return_weights="mean")
    print(
        f"\nCrossAttention(320 -> context 768): image {tuple(image.shape)} x text "
        f"{tuple(text.shape)} -> {tuple(out.shape)}, head-mean weights {tuple(weights.shape)}"
    )
    print(
        f"weights on padded tokens of the short prompt: {weights[1, :, 50:].abs().max().item():.1f}"
    )
    return 0
