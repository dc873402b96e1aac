"""`KVCache`: a decoder self-attention cache preallocated to the decode length, written in place.

One buffer per decoder layer holds the keys and values of every position decoded so far. A step
writes its new keys and values at the next position (no concatenation, no allocation); beam
search reorders the rows by gathering the filled prefix into a spare buffer of the same size and
swapping the two (at most rows x length copies, no allocation after the first reorder).

Storage is time-major, ``(capacity, 2, N, heads, dim_head)``: the filled prefix ``[:length]`` is
one contiguous block, so a reorder gathers it in one call. `keys` and `values` are views in the
package's layout (N, heads, length, dim_head).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks


class KVCache:
    """Keys and values of one decoder self-attention, preallocated for ``capacity`` positions.

    Args:
        rows: N, the decoded rows (batch x beams).
        heads: key/value heads.
        dim_head: size of each head.
        capacity: the most positions it holds (the decode length).
        dtype, device: of the stored keys and values.

    Attributes:
        length: positions written so far (0 .. capacity).
    """

    def __init__(
        self,
        rows: int,
        heads: int,
        dim_head: int,
        capacity: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        rows, heads, dim_head, capacity = _checks.positive_ints(
            **{"KVCache rows": rows, "KVCache heads": heads, "KVCache dim_head": dim_head,
               "KVCache capacity": capacity}
        )  # fmt: skip
        self.rows, self.heads, self.dim_head, self.capacity = rows, heads, dim_head, capacity
        self._store = torch.empty(capacity, 2, rows, heads, dim_head, dtype=dtype, device=device)
        self._spare: Tensor | None = None  # the gather target of `reorder`, made on first use
        self.length = 0

    @property
    def dtype(self) -> torch.dtype:
        return self._store.dtype

    @property
    def keys(self) -> Tensor:
        """(N, heads, length, dim_head), a view of the stored keys."""
        return self._store[: self.length, 0].permute(1, 2, 0, 3)

    @property
    def values(self) -> Tensor:
        """(N, heads, length, dim_head), a view of the stored values."""
        return self._store[: self.length, 1].permute(1, 2, 0, 3)

    def append(self, key_value: Tensor) -> tuple[Tensor, Tensor]:
        """Write one position and return the keys and values of every position so far.

        Args:
            key_value: (N, 2, heads, dim_head): the new position's key ``[:, 0]`` and value
                ``[:, 1]`` (any strides; e.g. a view of a fused K/V projection).

        Returns:
            keys, values: (N, heads, length, dim_head) views, the new position last.
        """
        if self.length >= self.capacity:
            raise ValueError(
                f"KVCache is full: it holds {self.capacity} positions; make it with a larger "
                "capacity"
            )
        expected = (self.rows, 2, self.heads, self.dim_head)
        if tuple(key_value.shape) != expected:
            raise ValueError(
                f"key_value must have shape (N, 2, heads, dim_head) = {expected}, got "
                f"{tuple(key_value.shape)}"
            )
        self._store[self.length].copy_(key_value.transpose(0, 1))  # (2, N, Hk, D)
        self.length += 1
        return self.keys, self.values

    def reorder(self, rows: Tensor) -> None:
        """Keep rows ``rows`` (N,) long, in that order (beam search's surviving parents).

        Gathers the filled prefix into the spare buffer and swaps the buffers: O(N x length)
        copies, no allocation after the first call.
        """
        if self.length == 0:
            return
        if self._spare is None:
            self._spare = torch.empty_like(self._store)
        n = self.length
        torch.index_select(self._store[:n], 2, rows, out=self._spare[:n])
        self._store, self._spare = self._spare, self._store

    def __repr__(self) -> str:
        return (
            f"KVCache(rows={self.rows}, heads={self.heads}, dim_head={self.dim_head}, "
            f"length={self.length}, capacity={self.capacity}, dtype={self.dtype})"
        )
