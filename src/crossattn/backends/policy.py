"""The dispatch policy: the cost rank of each built-in backend, and the rule that sets it.

Every backend declares, through ``Backend.rank(inputs)``, where it stands for a call: a lower
rank is tried first, ``None`` means "never chosen by dispatch" (it still runs when pinned).
Automatic dispatch (`registry.select_backend` with ``backend=None``) walks every registered
backend in rank order, ties in registration order, and takes the first with no
``not_supported_reasons``. The built-in backends rank ``FIRST`` (10), ``SECOND`` (20) and
``LAST`` (30); a backend registered with ``register_backend`` ranks ``USER`` (100, after them)
unless it says otherwise, and one that returns less than 10 is tried before every built-in one.

The built-in ranks, set by side-by-side measurements on a 2-core CPU (AVX-512
with bfloat16, no AMX; torch 2.13, 2 threads; `benchmarks/bench_op.py`, ``docs/backends.md``):

- CUDA and other accelerators: ``sdpa`` (PyTorch's flash, memory-efficient and cuDNN kernels);
  with weights ``lse`` (the fused kernel's output, weights rebuilt per query block from its
  log-sum-exp: no (B, H, L, S) scores beyond the map), then ``reference`` (weights that need
  gradients). A Python block loop is never chosen unless pinned.
- CPU, attention weights asked for: ``chunked`` (whole rows per tile, weights in the output's
  own pass; float32 past 8192 keys: key blocks and a second pass), then ``lse`` (a second score
  pass after the fused kernel), then ``reference``. Mean weights over the op without them,
  side by side (load average 12, ``OMP_WAIT_POLICY=PASSIVE``): (1, 8, 8192, 8192, 64) float32
  chunked 1.48x, lse 1.69x; (1, 8, 256, 65536, 64) float32 chunked 1.46x, lse 1.9x.
- CPU, bfloat16, every context length: ``chunked``. Quiet machine, ms, SDPA against chunked:
  (2, 8, 4096, 77, 64) 18.4 / 9.3; (8, 8, 512, 512, 64) with a key mask 39.7 / 32.7;
  (8, 8, 1, 1024, 64) 5.46 / 2.08; (1, 8, 256, 65536, 64) 264 / 254 with key blocks (whole
  rows since: 1.5x faster than SDPA at load average 10, passive wait); (1, 8, 8192, 8192, 64)
  979 / 823.
- CPU, float32 with a long context and few queries (S > 1024 and S >= 16 x G x L, the
  Perceiver-latents shape): ``chunked``; (1, 8, 256, 65536, 64): SDPA 315, chunked 270 ms.
- CPU, everything else (float32, float64, float16): ``sdpa``; (1, 8, 8192, 8192, 64) float32:
  SDPA 1083, chunked 1364 ms; (8, 8, 512, 512, 64): 38 / 60 ms; shorter contexts tie.

Under heavy load from other processes chunked falls 3-6x behind SDPA by default. The cause is the
OpenMP runtime's wait policy: libgomp's threads spin (300,000 rounds by default) at the end of
every parallel region, and chunked runs a few hundred regions per call where SDPA runs one; on
an oversubscribed CPU the spinning thread takes the core of the thread it waits for. With
``OMP_WAIT_POLICY=PASSIVE`` (set before the process starts) chunked stays level with SDPA under
the same load (measured at load average 15 on 2 cores, (1, 8, 256, 65536, 64) float32: chunked
over SDPA 3.61x spinning, 1.05x passive, 1.16x with ``GOMP_SPINCOUNT=1000``); see
``docs/backends.md``. So the two long-context ``chunked`` choices above (bfloat16 past 1024 keys,
and float32 with few queries) are made only when ``OMP_WAIT_POLICY=PASSIVE`` is set; without it
those calls go to ``sdpa``, which never falls that far behind.
"""

from __future__ import annotations

import os

import torch

from .base import USER_RANK, AttentionInputs

FIRST, SECOND, LAST = 10, 20, 30
USER = USER_RANK
# Contexts up to this length are one key block of the chunked backend (plain softmax, no online
# rescaling): there it beats SDPA in bfloat16 whatever the wait policy.
MAX_SINGLE_BLOCK = 1024


def passive_wait() -> bool:
    """Whether the OpenMP threads sleep rather than spin between parallel regions
    (``OMP_WAIT_POLICY=PASSIVE`` in the environment, read when the runtime loads)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def chunked_first(inputs: AttentionInputs) -> bool:
    """Whether ``chunked`` ranks before ``sdpa`` for a CPU call without weights."""
    if inputs.dtype == torch.bfloat16 and inputs.kv_len <= MAX_SINGLE_BLOCK:
        return True
    # Long contexts run a few hundred parallel regions per call in chunked: chosen only where
    # waiting threads sleep, since spinning ones make it 3-6x slower on a loaded machine.
    if not passive_wait():
        return False
    return inputs.dtype == torch.bfloat16 or _long_context_few_queries(inputs)


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
