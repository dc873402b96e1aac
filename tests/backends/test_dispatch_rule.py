"""Automatic dispatch follows the measured rule of `crossattn.backends.registry`.

Inputs live on the ``meta`` device (no memory, no arithmetic); the CPU rule is reached by
making them report the CPU as their device. Shapes are the op benchmark's.
"""

from __future__ import annotations

import pytest
import torch

from crossattn.backends import AttentionInputs, select_backend

A = (2, 8, 4096, 77, 64)
B = (1, 8, 256, 65536, 64)
C = (8, 8, 512, 512, 64)
D = (8, 8, 1, 1024, 64)
E = (1, 8, 8192, 8192, 64)


def _inputs(dims, dtype, weights=False, device="meta", kv_heads=None):
    b, h, length, s, e = dims
    hk = kv_heads or h
    q = torch.empty(b, h, length, e, dtype=dtype, device=device)
    k = torch.empty(b, hk, s, e, dtype=dtype, device=device)
    return AttentionInputs(q, k, k, None, e**-0.5, 0.0, weights)


@pytest.mark.parametrize(
    "dims, dtype, want",
    [
        (A, torch.bfloat16, "chunked"),
        (B, torch.bfloat16, "chunked"),
        (C, torch.bfloat16, "chunked"),
        (D, torch.bfloat16, "chunked"),
        (E, torch.bfloat16, "chunked"),
        (B, torch.float32, "chunked"),  # long context, few queries
        (A, torch.float32, "sdpa"),
        (C, torch.float32, "sdpa"),
        (D, torch.float32, "sdpa"),
        (E, torch.float32, "sdpa"),
        (B, torch.float64, "sdpa"),
    ],
)
def test_cpu_rule(dims, dtype, want, monkeypatch):
    inputs = _inputs(dims, dtype)
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    monkeypatch.setattr(AttentionInputs, "device", property(lambda self: torch.device("cpu")))
    assert select_backend(inputs).name == want


@pytest.mark.parametrize(
    "dims, dtype, want",
    [
        (A, torch.bfloat16, "chunked"),
        (D, torch.bfloat16, "chunked"),
        (B, torch.bfloat16, "sdpa"),
        (E, torch.bfloat16, "sdpa"),
        (B, torch.float32, "sdpa"),
    ],
)
def test_spinning_threads_keep_long_contexts_on_sdpa(dims, dtype, want, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(AttentionInputs, "device", property(lambda self: torch.device("cpu")))
    assert select_backend(_inputs(dims, dtype)).name == want


def test_grouped_queries_count_as_rows(monkeypatch):
    """S >= 16 x G x L: 8 query heads on 1 K/V head make B's 256 queries 2048 rows."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setattr(AttentionInputs, "device", property(lambda self: torch.device("cpu")))
    assert select_backend(_inputs(B, torch.float32, kv_heads=8)).name == "chunked"
    many = (1, 64, 1024, 65536, 64)
    assert select_backend(_inputs(many, torch.float32, kv_heads=1)).name == "sdpa"


@pytest.mark.parametrize("weights", [True, "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_weights_on_the_cpu_take_chunked_and_elsewhere_lse(weights, dtype, monkeypatch):
    accelerator = _inputs(E, dtype, weights=weights)
    assert select_backend(accelerator).name == "lse"
    assert select_backend(_inputs(E, dtype)).name == "sdpa"
    monkeypatch.setattr(AttentionInputs, "device", property(lambda self: torch.device("cpu")))
    assert select_backend(_inputs(E, dtype, weights=weights)).name == "chunked"
