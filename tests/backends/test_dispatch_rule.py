"""Automatic dispatch follows the measured rule of `crossattn.backends.registry`.

Inputs live on the ``meta`` device (no memory, no arithmetic); the CPU rule is reached by
making them report the CPU as their device. Shapes are the op benchmark's.
"""

from __future__ import annotations

import pytest
import torch

from crossattn import _cpu
from crossattn.backends import AttentionInputs, select_backend

A = (2, 8, 4096, 77, 64)
B = (1, 8, 256, 65536, 64)
C = (8, 8, 512, 512, 64)
D = (8, 8, 1, 1024, 64)
E = (1, 8, 8192, 8192, 64)
DECODE_77 = (8, 8, 1, 77, 64)  # a short context, but too few scores for the tile loop


@pytest.fixture
def on_cpu(monkeypatch):
    """Make meta inputs report the CPU; returns a setter for the processor's AMX flag."""
    monkeypatch.setattr(AttentionInputs, "device", property(lambda self: torch.device("cpu")))
    return lambda amx: monkeypatch.setattr(_cpu, "AMX", amx)


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
        (A, torch.float32, "chunked"),  # short context
        (DECODE_77, torch.float32, "sdpa"),
        (C, torch.float32, "sdpa"),
        (D, torch.float32, "sdpa"),
        (E, torch.float32, "sdpa"),
        (B, torch.float64, "sdpa"),
    ],
)
def test_cpu_rule_without_amx(dims, dtype, want, monkeypatch, on_cpu):
    on_cpu(False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert select_backend(_inputs(dims, dtype)).name == want


@pytest.mark.parametrize("wait", ["PASSIVE", None])
@pytest.mark.parametrize(
    "dims, dtype, want",
    [
        (A, torch.bfloat16, "chunked"),
        (A, torch.float32, "chunked"),
        ((1, 8, 1024, 77, 64), torch.bfloat16, "chunked"),
        ((2, 8, 4096, 78, 64), torch.bfloat16, "sdpa"),  # past the short contexts
        (DECODE_77, torch.bfloat16, "sdpa"),
        (B, torch.bfloat16, "sdpa"),
        (C, torch.bfloat16, "sdpa"),
        (D, torch.bfloat16, "sdpa"),
        (E, torch.bfloat16, "sdpa"),
        (B, torch.float32, "sdpa"),
        (E, torch.float32, "sdpa"),
        (A, torch.float16, "sdpa"),  # short contexts: float32 and bfloat16 only
    ],
)
def test_cpu_rule_with_amx(dims, dtype, want, wait, monkeypatch, on_cpu):
    """AMX tiles make the fused kernel's bfloat16 blocks fast: the tile loop keeps only the
    short contexts, whatever the wait policy."""
    on_cpu(True)
    if wait is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", wait)
    assert select_backend(_inputs(dims, dtype)).name == want


@pytest.mark.parametrize("amx", [False, True])
def test_short_contexts_take_chunked_for_the_forward_only(amx, monkeypatch, on_cpu):
    """Its backward is a Python tile loop, and its dropout draws float tiles: training calls at
    a short context stay on SDPA (float32; bfloat16 without AMX takes chunked by its own rule)."""
    on_cpu(amx)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    b, h, length, s, e = A
    q = torch.empty(b, h, length, e, device="meta")
    k = torch.empty(b, h, s, e, device="meta")
    assert select_backend(AttentionInputs(q, k, k, None, 0.125, 0.0, False)).name == "chunked"
    with_grad = AttentionInputs(q.requires_grad_(), k, k, None, 0.125, 0.0, False)
    assert select_backend(with_grad).name == "sdpa"
    dropout = AttentionInputs(q.detach(), k, k, None, 0.125, 0.1, False)
    assert select_backend(dropout).name == "sdpa"


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
def test_spinning_threads_keep_long_contexts_on_sdpa(dims, dtype, want, monkeypatch, on_cpu):
    on_cpu(False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert select_backend(_inputs(dims, dtype)).name == want


def test_grouped_queries_count_as_rows(monkeypatch, on_cpu):
    """S >= 16 x G x L: 8 query heads on 1 K/V head make B's 256 queries 2048 rows."""
    on_cpu(False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert select_backend(_inputs(B, torch.float32, kv_heads=8)).name == "chunked"
    many = (1, 64, 1024, 65536, 64)
    assert select_backend(_inputs(many, torch.float32, kv_heads=1)).name == "sdpa"


@pytest.mark.parametrize("weights", [True, "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("amx", [False, True])
def test_weights_on_the_cpu_take_chunked_and_elsewhere_lse(weights, dtype, amx, monkeypatch):
    accelerator = _inputs(E, dtype, weights=weights)
    assert select_backend(accelerator).name == "lse"
    assert select_backend(_inputs(E, dtype)).name == "sdpa"
    monkeypatch.setattr(_cpu, "AMX", amx)
    monkeypatch.setattr(AttentionInputs, "device", property(lambda self: torch.device("cpu")))
    assert select_backend(_inputs(E, dtype, weights=weights)).name == "chunked"
