"""Word links read off the cross-attention of a force-decoded sentence pair.

The map is the decoder-to-encoder attention ``weights (layers, heads, T, S)``. Layout of the
positions:

* row ``t`` is the decoder position that *reads* token ``t`` of ``[start, w_0, ..., w_{m-1}]``
  and *predicts* the next one: row ``j`` predicts target word ``j`` and row ``j + 1`` reads
  (is fed) target word ``j``. Rows past ``m + 1`` (padding) are ignored;
* column ``source_start + i`` is source word ``i`` (``source_start`` counts leading special
  tokens such as a source BOS, 0 by default); columns of special tokens (EOS) and padding are
  ignored.

`ExtractionConfig` says how a map becomes links: which layers and heads to average, which of
the two rows speaks for target word ``j`` (``shift``: ``"predict"`` is row ``j``, the attention
while the decoder predicts ``w_j``; ``"feed"`` is row ``j + 1``, while it reads ``w_j``, which
shift-att (Chen et al. 2020) found better for large models; ``"average"`` their mean), and the
decision rule. Since row ``j + 1`` is also the row that predicts ``w_{j+1}``, the ``"feed"``
links of word ``j`` are the ``"predict"`` links of word ``j + 1``: a model whose attention
looks at the source of the word it is about to write (as the small translators of
``crossattn train`` do: about 2% AER with ``"predict"``) is one word off under ``"feed"`` (over
90% AER). After selecting the rows and the word columns, each row is renormalised to sum to 1
over the source words (attention to EOS is dropped).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .. import _checks
from ..data.pharaoh import Link
from .config import DEFAULT_EXTRACTION, ExtractionConfig

if TYPE_CHECKING:
    import torch

__all__ = ["alignment_scores", "extract_alignment", "word_links_from_subwords"]


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run small CPU tensor work on one thread: on these (T, S)-sized maps thread hand-off costs
    more than the work, 5 to 30 times more on a busy machine. The thread count is restored."""
    import torch

    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _as_4d(weights: torch.Tensor) -> torch.Tensor:
    import torch

    if not isinstance(weights, torch.Tensor):
        raise TypeError(
            f"weights must be a torch.Tensor (layers, heads, T, S), got {type(weights).__name__}"
        )
    if weights.dim() == 2:
        return weights[None, None]
    if weights.dim() == 3:
        return weights[None]
    if weights.dim() != 4:
        raise ValueError(
            f"weights must have shape (layers, heads, T, S), (heads, T, S) or (T, S); "
            f"got {tuple(weights.shape)}"
        )
    return weights


def _resolve(index: tuple[int, ...] | None, size: int, what: str) -> list[int]:
    if index is None:
        return list(range(size))
    out = []
    for k in index:
        if not -size <= k < size:
            raise ValueError(f"ExtractionConfig.{what} has {k} but the weights have {size} {what}")
        out.append(k % size)
    return out


def _rows_needed(shift: str, n_target: int) -> int:
    return n_target + (0 if shift == "predict" else 1)


def _rows_used(shift: str, n_target: int) -> slice:
    """The decoder rows that speak for the target words under ``shift``."""
    return slice(1 if shift == "feed" else 0, _rows_needed(shift, n_target))


def _shifted_rows(mean: torch.Tensor, shift: str, n_target: int) -> torch.Tensor:
    """``(..., n_target, S)``: the rows of ``mean`` ``(..., T, S)`` that speak for target words
    ``0 .. n_target - 1`` under ``shift`` (row ``j`` predicts ``w_j``, row ``j + 1`` reads it)."""
    predict = mean[..., :n_target, :]
    if shift == "predict":
        return predict
    feed = mean[..., 1 : n_target + 1, :]
    return feed if shift == "feed" else 0.5 * (predict + feed)


def _reading(mean: torch.Tensor, shift: str, n_target: int) -> torch.Tensor:
    """``(..., n_target, S)`` scores: the shifted rows of ``mean`` ``(..., T, S)``, each
    renormalised to sum to 1 (or 0 where it has no mass)."""
    return _normalised(_shifted_rows(mean, shift, n_target))


def _normalised(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x`` divided by its sums along ``dim``; zeros where a sum is 0."""
    import torch

    total = x.sum(dim=dim, keepdim=True)
    return torch.where(total > 0, x / total.clamp_min(1e-30), torch.zeros_like(x))


def _check_config(config: Any) -> ExtractionConfig:
    if not isinstance(config, ExtractionConfig):
        raise TypeError(
            "config must be an ExtractionConfig (build one from a dict with "
            f"ExtractionConfig.from_dict), got {type(config).__name__}"
        )
    return config


def _check_values(region: torch.Tensor, name: str) -> None:
    """Refuse NaN, inf and negative attention at the positions of real words."""
    import torch

    if not torch.isfinite(region).all():
        raise ValueError(f"{name} holds NaN or inf at the positions of real words")
    if region.numel() and float(region.min()) < 0:
        raise ValueError(
            f"{name} must be non-negative attention weights, got a minimum of "
            f"{float(region.min()):.3g} at the positions of real words"
        )


def _check_sizes(
    weights: torch.Tensor, n_source: int, n_target: int, source_start: int, shift: str
) -> None:
    t, s = weights.shape[-2:]
    if n_source < 1 or n_target < 1:
        raise ValueError(
            f"n_source_words and n_target_words must be >= 1, got {n_source} and {n_target}"
        )
    if source_start < 0 or source_start + n_source > s:
        raise ValueError(
            f"weights have S={s} source positions but source words {source_start}.."
            f"{source_start + n_source - 1} were asked for (n_source_words={n_source}, "
            f"source_start={source_start})"
        )
    rows = _rows_needed(shift, n_target)
    if rows > t:
        raise ValueError(
            f"weights have T={t} decoder positions but shift={shift!r} with n_target_words="
            f"{n_target} needs {rows} (row 0 reads the start token, row j + 1 reads target word j)"
        )


def alignment_scores(
    weights: torch.Tensor,
    config: ExtractionConfig = DEFAULT_EXTRACTION,
    n_source_words: int | None = None,
    n_target_words: int | None = None,
    *,
    source_start: int = 0,
) -> torch.Tensor:
    """The averaged, shifted and renormalised map that `extract_alignment` thresholds.

    Args:
        weights: ``(layers, heads, T, S)`` decoder-to-encoder attention of one force-decoded
            pair (``(heads, T, S)`` and ``(T, S)`` are read as one layer / one head); see the
            module docstring for the row and column layout.
        config: layers, heads and shift to use.
        n_source_words: source words (columns ``source_start ..``); default ``S - source_start``.
        n_target_words: target words; default ``T - 1`` (rows: start token + words).
        source_start: index of the first source word's column.

    Returns:
        ``(n_target_words, n_source_words)`` float tensor; each row sums to 1 (a row with no
        attention on any source word stays 0).

    Raises:
        TypeError: ``config`` is not an `ExtractionConfig` (use `ExtractionConfig.from_dict`
            for a dict), or a count or ``source_start`` is not an int.
        ValueError: sizes that do not fit the weights, or NaN, inf or negative weights at the
            positions of real words (in the layers and heads the config averages).
    """
    import torch

    config = _check_config(config)
    w = _as_4d(weights)
    n_layers, n_heads, t, s = w.shape
    source_start = _checks.nonnegative_int(source_start, "source_start")
    n_source = (
        s - source_start
        if n_source_words is None
        else _checks.nonnegative_int(n_source_words, "n_source_words")
    )
    n_target = (
        t - 1
        if n_target_words is None
        else _checks.nonnegative_int(n_target_words, "n_target_words")
    )
    _check_sizes(w, n_source, n_target, source_start, config.shift)
    layers = _resolve(config.layers, n_layers, "layers")
    heads = _resolve(config.heads, n_heads, "heads")
    w = w[layers][:, heads].to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    w = w[..., source_start : source_start + n_source]  # (layers, heads, T, n_source)
    _check_values(w[:, :, _rows_used(config.shift, n_target)], "weights")
    mean = w.mean(dim=(0, 1))  # (T, n_source)
    return _reading(mean, config.shift, n_target)  # (n_target, n_source)


def _live(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``valid`` less the rows (target words) with no attention on any real source word."""
    return valid & (scores.masked_fill(~valid, 0) > 0).any(dim=-1, keepdim=True)


def _decide(
    scores: torch.Tensor, valid: torch.Tensor, method: str, threshold: float
) -> torch.Tensor:
    """Links (bool) from scores ``(..., T, S)``; ``valid`` masks real word pairs. Rows with no
    attention mass get no link, whatever the method."""
    import torch

    valid = _live(scores, valid)
    neg = torch.finfo(scores.dtype).min
    if method in ("argmax", "argmax_threshold"):
        masked = scores.masked_fill(~valid, neg)
        best = masked.argmax(dim=-1, keepdim=True)
        links = torch.zeros_like(valid).scatter_(-1, best, True) & valid
        if method == "argmax_threshold":
            links |= (scores >= threshold) & valid
        return links
    if method == "threshold":
        return (scores >= threshold) & valid
    # bidirectional: column-normalised (source -> target) as well
    cols = _normalised(scores * valid, dim=-2)
    return (scores >= threshold) & (cols >= threshold) & valid


def extract_alignment(
    weights: torch.Tensor,
    config: ExtractionConfig = DEFAULT_EXTRACTION,
    n_source_words: int | None = None,
    n_target_words: int | None = None,
    *,
    source_start: int = 0,
) -> set[Link]:
    """Word links ``{(source_index, target_index)}`` (0-indexed) read off one pair's attention.

    Args:
        weights: ``(layers, heads, T, S)`` decoder-to-encoder attention (see the module
            docstring: row ``j + 1`` reads target word ``j``, column ``source_start + i`` is
            source word ``i``).
        config: an `ExtractionConfig` (a dict is refused with a TypeError: convert it with
            `ExtractionConfig.from_dict`); `DEFAULT_EXTRACTION` needs no gold.
        n_source_words, n_target_words: word counts, ints >= 1 (default: ``S - source_start``,
            ``T - 1``).
        source_start: index of the first source word's column, an int >= 0.

    A target word with no attention on any source word gets no link. Raises as
    `alignment_scores` does.
    """
    import torch

    config = _check_config(config)
    with _one_thread():
        scores = alignment_scores(
            weights, config, n_source_words, n_target_words, source_start=source_start
        )
        valid = torch.ones_like(scores, dtype=torch.bool)
        links = _decide(scores, valid, config.method, float(config.threshold))
        return {Link(i, j) for j, i in links.nonzero().tolist()}


def word_links_from_subwords(
    links: Iterable[Link], source_word_of: Sequence[int], target_word_of: Sequence[int]
) -> set[Link]:
    """Map links between subword positions back to links between words.

    Words ``(a, b)`` are linked when any subword of ``a`` is linked to any subword of ``b`` (the
    convention of awesome-align). ``source_word_of[k]`` is the word index of source subword
    ``k`` (e.g. ``[0, 0, 1]`` for ``un ##able cat``); ``target_word_of`` likewise.
    """
    out: set[Link] = set()
    n_src, n_tgt = len(source_word_of), len(target_word_of)
    for i, j in links:
        if not (0 <= i < n_src and 0 <= j < n_tgt):
            raise ValueError(
                f"subword link ({i}, {j}) is out of range for {n_src} source and {n_tgt} target "
                "subwords (len(source_word_of), len(target_word_of))"
            )
        out.add(Link(source_word_of[i], target_word_of[j]))
    return out
