"""The chunked backend's tiling: how a call's (B*Hk, rows, S) problem is cut into tiles.

Rows are the L queries of one query group, or the G*L queries of a K/V head when the groups are
folded; a tile holds ``n`` (batch, K/V head) entries and a block of rows, over one key block
(the whole context) or, for long contexts, key blocks of an online softmax.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .base import AttentionInputs
from .policy import MAX_SINGLE_BLOCK

# A score tile holds at most about this many elements; every buffer is sized from it. Tiles are
# large on purpose: every PyTorch op is a parallel region whose threads wait for each other at
# its end (see policy.py on a busy CPU), so fewer, larger ops beat many cache-sized ones.
TILE_ELEMENTS = 1 << 23  # one key block: 16 MiB of bfloat16 or 32 MiB of float32 scores
ONLINE_TILE_ELEMENTS = 1 << 22  # online softmax: float32 scores plus a 16-bit copy, 24 MiB
KEYS_FIRST_MAX_S = 256  # contexts up to this long: keys-first scores on the single-block path
K_BLOCK = 2048  # key block of the online softmax for longer contexts
MIN_ROWS = 16
FLOAT32_WHOLE_ROWS_MAX_S = 8192  # longest float32 context whose weights take whole rows
# Fewest query rows of a float32 whole-row tile with weights: below it the score matmul
# (rows x E) @ (E x S) is too skinny for the matmul's speed (see `plan`). bfloat16 tiles keep
# MIN_ROWS: their matmul stays fast on fewer rows, and tiles of every head win there.
WEIGHTS_MIN_ROWS = 128


@dataclass(frozen=True)
class _Tile:
    """One tile: K/V batch entries [i0, i1) of B*Hk, a query group (or None), rows [r0, r1)."""

    index: int
    i0: int
    i1: int
    group: int | None  # None: query heads are folded into the rows (rows = G*L)
    r0: int
    r1: int


@dataclass(frozen=True)
class _Plan:
    """How the (B*Hk, rows, S) problem is cut into tiles."""

    batch: int  # B
    kv_heads: int  # Hk
    groups: int  # G = H / Hk
    q_len: int  # L
    kv_len: int  # S
    fold: bool  # rows are the G*L queries of a K/V head; else one group's L queries at a time
    batch_block: int
    row_block: int
    k_block: int

    @property
    def entries(self) -> int:
        return self.batch * self.kv_heads

    @property
    def rows(self) -> int:
        return self.groups * self.q_len if self.fold else self.q_len

    def k_slices(self) -> list[slice]:
        s, kb = self.kv_len, self.k_block
        return [slice(j, min(j + kb, s)) for j in range(0, s, kb)]

    def tiles(self) -> Iterator[_Tile]:
        groups: list[int | None] = [None] if self.fold else list(range(self.groups))
        index = 0
        for g in groups:
            for i0 in range(0, self.entries, self.batch_block):
                i1 = min(i0 + self.batch_block, self.entries)
                for r0 in range(0, self.rows, self.row_block):
                    yield _Tile(index, i0, i1, g, r0, min(r0 + self.row_block, self.rows))
                    index += 1


def plan(
    inputs: AttentionInputs,
    tile_elements: int | None = None,
    k_block: int | None = None,
    single_block: int = MAX_SINGLE_BLOCK,
) -> _Plan:
    """Choose the tiling: whole rows of several heads for short contexts, row blocks otherwise."""
    b, hk, g = inputs.batch, inputs.kv_heads, inputs.groups
    length, s = inputs.q_len, inputs.kv_len
    mask = inputs.mask
    # Folding G query heads into the rows needs a mask that is the same for every head and query.
    fold = g == 1 or mask is None or (mask.shape[1] == 1 and mask.shape[2] == 1)
    rows = g * length if fold else length
    # Whole rows (one key block) give weights in the output's own pass, and run bfloat16
    # through one fused softmax per row (B: 1.5x faster than SDPA, key blocks 1x). float32
    # weights take them up to FLOAT32_WHOLE_ROWS_MAX_S keys (E mean: 1.48x SDPA's time, key
    # blocks 2.13x), and beyond it while a tile holds WEIGHTS_MIN_ROWS rows of one head (B mean
    # on the Intel Xeon: 1.25-1.30x SDPA's time so, 1.42-1.49x in key blocks, 2.5x in tiles of
    # 16 rows of every head; B per-head weights 1.61-1.70x against 2.06-2.09x).
    bf16 = inputs.dtype == torch.bfloat16
    row_budget = tile_elements or TILE_ELEMENTS  # scores of one tile of whole rows
    min_rows = MIN_ROWS if bf16 else min(rows, WEIGHTS_MIN_ROWS)
    weights_rows = inputs.return_weights and (
        bf16 or s <= FLOAT32_WHOLE_ROWS_MAX_S or min_rows * s <= row_budget
    )
    long_bf16 = bf16 and not inputs.requires_grad and s >= 16 * rows
    whole_rows = (weights_rows or long_bf16) and MIN_ROWS * s <= row_budget
    if k_block is None:
        k_block = s if s <= single_block or whole_rows else K_BLOCK
    kb = min(k_block, s)
    if tile_elements is None:
        tile_elements = TILE_ELEMENTS if kb == s else ONLINE_TILE_ELEMENTS
    if rows * kb <= tile_elements:
        row_block = rows
        batch_block = max(1, min(b * hk, tile_elements // (rows * kb)))
        batch_block = -(-(b * hk) // -(-(b * hk) // batch_block))  # even tiles
    elif inputs.return_weights == "mean" and g == 1 and hk * min_rows * kb <= tile_elements:
        # Every head of a batch row in one tile: the head mean is one reduction into the map.
        batch_block = hk
        row_block = -(-rows // -(-rows // (tile_elements // (hk * kb))))  # even tiles
    else:
        batch_block = 1
        row_block = max(MIN_ROWS, tile_elements // kb)
        row_block = -(-rows // -(-rows // row_block))  # even tiles, no small last one
    return _Plan(b, hk, g, length, s, fold, batch_block, row_block, kb)
