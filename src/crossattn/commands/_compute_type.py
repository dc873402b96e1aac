"""``--compute-type``: the option of the commands that run a trained model (torch-free here)."""

from __future__ import annotations

import argparse

from ..cli import CommandError
from ..compute_types import COMPUTE_TYPES


def add_compute_type_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compute-type",
        choices=COMPUTE_TYPES,
        default="float32",
        help="weights and arithmetic of the model: float32, bfloat16, int8 (int8 Linears and "
        "cross-attention memory) or int8_bfloat16; see docs/compute-types.md (default: float32)",
    )


def check_compute_type_runs(compute_type: str) -> None:
    """CommandError naming --compute-type when this machine or build cannot run it."""
    from ..models.quantize import compute_type_reason

    reason = compute_type_reason(compute_type)
    if reason is not None:
        raise CommandError(f"argument --compute-type: {compute_type!r} cannot run here: {reason}")
