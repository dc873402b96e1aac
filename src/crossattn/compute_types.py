"""The compute types of a translator, named like CTranslate2's; torch-free (the CLI reads them).

- ``float32``: float32 weights and arithmetic (the model as trained).
- ``bfloat16``: bfloat16 weights and arithmetic (the search reads float32 logits).
- ``int8``: every Linear with int8 weights (one scale per output channel) and int8 activations
  (quantised at each call), and the cross-attention memory (each decoder layer's prepared keys
  and values) stored as int8 with one scale per (row, head, token); everything else float32.
- ``int8_bfloat16``: the same int8 Linears and memory, bfloat16 everywhere else.

See `crossattn.models.quantize` and docs/compute-types.md.
"""

from __future__ import annotations

from ._checks import choice

COMPUTE_TYPES = ("float32", "bfloat16", "int8", "int8_bfloat16")


def check_compute_type(value: object, name: str = "compute_type") -> str:
    """`value` if it names a compute type; ValueError (TypeError for a non-string) otherwise."""
    return choice(value, name, COMPUTE_TYPES)
