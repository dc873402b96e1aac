"""The dispatch policy: the cost rank of each built-in backend, and the rule that sets it.

Every backend declares, through ``Backend.rank(inputs)``, where it stands for a call: a lower
rank is tried first, ``None`` means "never chosen by dispatch" (it still runs when pinned).
Automatic dispatch (`registry.select_backend` with ``backend=None``) walks every registered
backend in rank order, ties in registration order, and takes the first with no
``not_supported_reasons``. The built-in backends rank ``FIRST`` (10), ``SECOND`` (20) and
``LAST`` (30); a backend registered with ``register_backend`` ranks ``USER_RANK`` (100, after them)
unless it says otherwise, and one that returns less than 10 is tried before every built-in one.

The built-in ranks (the measurements that set them, with torch 2.13, are in
``docs/backends.md``, "The dispatch rule", and the op benchmark's recorded run in
``benchmarks/RESULTS.md``):

- CUDA and other accelerators: ``sdpa``; with weights ``lse`` (the fused kernel's output,
  weights rebuilt per query block from its log-sum-exp), then ``reference`` (weights that need
  gradients). A Python block loop is never chosen unless pinned.
- CPU, attention weights asked for: ``chunked`` (weights in the output's own pass), then
  ``lse``, then ``reference``.
- CPU without weights, every processor: ``chunked`` for short contexts (float32 or bfloat16,
  S <= ``SHORT_CONTEXT_MAX_S`` keys and at least ``SHORT_CONTEXT_MIN_SCORES`` scores: text
  conditioning; forward only, without dropout), where the fused kernel pays for a key block
  it cannot fill.
- CPU without weights, a processor with AMX tiles (``crossattn._cpu.AMX``): ``sdpa`` for everything else, since
  the fused kernel then runs its bfloat16 blocks on AMX and beats the tile loop at every longer
  context measured, in bfloat16 up to 4.8x.
- CPU without weights, no AMX: ``chunked`` for bfloat16 contexts of one key block (up to
  ``MAX_SINGLE_BLOCK`` keys); for longer bfloat16 contexts and for float32 with a long context
  and few queries (S > 1024 and S >= 16 x G x L) only when ``OMP_WAIT_POLICY=PASSIVE`` is set,
  since spinning OpenMP threads make its few hundred parallel regions per call 3-6x slower on a
  loaded machine; ``sdpa`` for everything else.
"""

from __future__ import annotations

import os

import torch

from .. import _cpu
from .base import AttentionInputs

FIRST, SECOND, LAST = 10, 20, 30
# Contexts up to this length are one key block of the chunked backend (plain softmax, no online
# rescaling): on a CPU without AMX it beats SDPA there in bfloat16 whatever the wait policy.
MAX_SINGLE_BLOCK = 1024
# Short contexts (text conditioning: 77 tokens): ``chunked`` on every CPU, in float32 too, from
# this many scores (B x H x L x S) on; below it (decode steps) its few ops cost more than the
# fused kernel. At 80 keys and more the fused kernel fills its blocks and is as fast or faster.
SHORT_CONTEXT_MAX_S = 77
SHORT_CONTEXT_MIN_SCORES = 1 << 18


def passive_wait() -> bool:
    """Whether the OpenMP threads sleep rather than spin between parallel regions
    (``OMP_WAIT_POLICY=PASSIVE`` in the environment, read when the runtime loads)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def chunked_first(inputs: AttentionInputs) -> bool:
    """Whether ``chunked`` ranks before ``sdpa`` for a CPU call without weights."""
    if _short_context(inputs):
        return True
    if _cpu.AMX:
        return False  # the fused kernel's AMX blocks win everywhere else
    if inputs.dtype == torch.bfloat16 and inputs.kv_len <= MAX_SINGLE_BLOCK:
        return True
    # Long contexts run a few hundred parallel regions per call in chunked: chosen only where
    # waiting threads sleep, since spinning ones make it 3-6x slower on a loaded machine.
    if not passive_wait():
        return False
    return inputs.dtype == torch.bfloat16 or _long_context_few_queries(inputs)


def _short_context(inputs: AttentionInputs) -> bool:
    """float32 or bfloat16 with S <= 77 keys and at least 2^18 scores, forward only (its
    backward is a Python tile loop: slower than SDPA's there) and without dropout."""
    if inputs.dtype not in (torch.float32, torch.bfloat16):
        return False
    if inputs.requires_grad or inputs.dropout_p > 0.0:
        return False
    scores = inputs.batch * inputs.heads * inputs.q_len * inputs.kv_len
    return inputs.kv_len <= SHORT_CONTEXT_MAX_S and scores >= SHORT_CONTEXT_MIN_SCORES


def _long_context_few_queries(inputs: AttentionInputs) -> bool:
    """float32 at S > 1024 and S >= 16 x G x L, where chunked's online softmax beats SDPA."""
    rows = inputs.groups * inputs.q_len
    s = inputs.kv_len
    return inputs.dtype == torch.float32 and s > MAX_SINGLE_BLOCK and s >= 16 * rows


def sdpa_rank(inputs: AttentionInputs) -> int | None:
    """PyTorch's fused kernels: first, except on the CPU where ``chunked`` is first."""
    if inputs.return_weights:
        return None  # it returns no weights
    on_cpu = inputs.device.type == "cpu"
    return SECOND if on_cpu and chunked_first(inputs) else FIRST


def chunked_rank(inputs: AttentionInputs) -> int | None:
    """The PyTorch tile loop: CPU only, first with weights or where `chunked_first` says so."""
    if inputs.device.type != "cpu":
        return None  # a Python block loop is never chosen on an accelerator unless pinned
    return FIRST if inputs.return_weights or chunked_first(inputs) else SECOND


def lse_rank(inputs: AttentionInputs) -> int | None:
    """The fused kernel plus weights from its log-sum-exp: first with weights on accelerators,
    second on the CPU (after ``chunked``); without weights second on accelerators only."""
    if inputs.device.type != "cpu":
        return FIRST if inputs.return_weights else SECOND
    return SECOND if inputs.return_weights else None


def reference_rank(inputs: AttentionInputs) -> int:
    """The plain math: last, for what no other backend runs (weights that need gradients)."""
    return LAST
