"""What this CPU offers the fast paths, probed once at import (no call out while compiling).

- ``AMX``: Intel's Advanced Matrix Extensions tiles (Xeon 4th generation and later), on which
  PyTorch's fused attention kernel runs its bfloat16 blocks (see `crossattn.backends.policy`).
- ``INTEL``: an Intel processor, where MKL's float32 matrix multiply of a pre-transposed weight
  is the fastest small-batch linear (see `crossattn.models.packed`).
"""

from __future__ import annotations

import torch


def _probe_amx() -> bool:
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except (RuntimeError, AttributeError):  # a build without the probe's kernels
        return False


def _probe_intel() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip() == "GenuineIntel"
    except OSError:  # not Linux
        pass
    return False


AMX: bool = _probe_amx()
INTEL: bool = _probe_intel()
