"""Greedy translation with onnxruntime from a directory written by `export_onnx`.

Runs ``encoder.onnx`` once per batch and ``decoder_step.onnx`` once per target token, keeping the
decoder self-attention cache between steps; the tokens and scores are those of
`crossattn.models.greedy_decode` (the same rule: ``<pad>`` and ``<s>`` never produced, the
longest output ``2 S + 10`` tokens by default, capped by the model's ``max_len``).

Example::

    from crossattn.models.export_onnx_runner import OnnxTranslator

    translator = OnnxTranslator("demo-out/onnx")
    translator.translate(["the red car"])  # [['la', 'voiture', 'rouge']]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import _checks
from ..data.parallel import tokenize
from .decoding import Hypothesis
from .export_common import require
from .export_onnx import CONFIG_FILE, FORMAT, FORMAT_VERSION
from .seq2seq import Seq2SeqConfig
from .vocab import Vocabulary


class OnnxTranslator:
    """The exported encoder and decoder step behind greedy decoding.

    Args:
        directory: a directory written by `export_onnx` (``crossattn export --format onnx``).
        threads: onnxruntime intra-op threads (None: onnxruntime's default).

    Raises:
        ImportError: onnxruntime is not installed.
        FileNotFoundError: a file of the export is missing.
        ValueError: the directory is not an export of this format.
    """

    def __init__(self, directory: str | os.PathLike, *, threads: int | None = None):
        ort = require("onnxruntime", "running an ONNX export")
        d = Path(directory)
        path = d / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: is {d} a directory of export_onnx?")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} export (no 'format': {FORMAT!r})")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: export version {meta.get('version')!r}, this reader knows "
                f"{FORMAT_VERSION}; export the model again"
            )
        for key in ("encoder", "decoder_step", "source_vocab", "target_vocab"):
            if not (d / meta[key]).is_file():
                raise FileNotFoundError(f"{d / meta[key]} is missing: export the model again")
        if threads is not None:
            threads = _checks.positive_int(threads, "threads")
        self.config = Seq2SeqConfig.from_dict(meta["model"])
        self.source_vocab = Vocabulary.load(d / meta["source_vocab"])
        self.target_vocab = Vocabulary.load(d / meta["target_vocab"])
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(d / meta["encoder"]), options, providers=providers)
        self.step = ort.InferenceSession(str(d / meta["decoder_step"]), options,
                                         providers=providers)  # fmt: skip

    def greedy(
        self, source_ids, source_mask=None, *, max_len: int | None = None
    ) -> list[Hypothesis]:
        """Greedy decoding of a batch of source ids.

        Args:
            source_ids: (B, S) integer ids (a numpy array, a torch tensor or nested lists).
            source_mask: (B, S) bool, True = valid token; None when nothing is padded.
            max_len: most tokens produced per sentence (EOS included); default ``2 S + 10``
                for the longest valid row, capped by the model's ``max_len``.

        Returns:
            One `Hypothesis` per row (tokens without BOS and EOS, summed log-probability,
            finished); ``attention`` is None.
        """
        c = self.config
        ids = np.asarray(source_ids, dtype=np.int64)
        if ids.ndim != 2 or 0 in ids.shape:
            raise ValueError(f"source_ids must be a non-empty (B, S) array, got {ids.shape}")
        if ids.min() < 0 or ids.max() >= c.source_vocab_size:
            raise ValueError(
                f"source_ids holds ids from {ids.min()} to {ids.max()}; this vocabulary has "
                f"ids 0..{c.source_vocab_size - 1}"
            )
        if ids.shape[1] > c.max_len:
            raise ValueError(f"source_ids has S={ids.shape[1]} > the model's max_len {c.max_len}")
        mask = np.ones(ids.shape, bool) if source_mask is None else np.asarray(source_mask)
        if mask.dtype != np.bool_ or mask.shape != ids.shape:
            raise ValueError(
                f"source_mask must be bool with the shape of source_ids {ids.shape}, got "
                f"{mask.dtype} {mask.shape}"
            )
        if max_len is None:
            steps = min(c.max_len, 2 * int(mask.sum(1).max()) + 10)
        else:
            steps = min(c.max_len, _checks.positive_int(max_len, "max_len"))
        return self._greedy(ids, mask, steps)

    def _greedy(self, ids: np.ndarray, mask: np.ndarray, steps: int) -> list[Hypothesis]:
        c = self.config
        cross_keys, cross_values = self.encoder.run(
            None, {"source_ids": ids, "source_mask": mask}
        )  # (L, B, H, S, Dh) each
        layers, b, heads, _, dim_head = cross_keys.shape
        self_keys = np.zeros((layers, b, heads, 0, dim_head), np.float32)  # no step yet
        self_values = self_keys
        tokens = np.full(b, c.bos_id, np.int64)
        out = np.full((b, steps), c.pad_id, np.int64)
        scores = np.zeros(b, np.float32)
        done = np.zeros(b, bool)
        lengths = np.full(b, steps)
        for t in range(steps):
            log_probs, self_keys, self_values = self.step.run(None, {
                "tokens": tokens, "self_keys": self_keys, "self_values": self_values,
                "cross_keys": cross_keys, "cross_values": cross_values, "source_mask": mask,
            })  # fmt: skip
            tokens = np.where(done, c.pad_id, log_probs.argmax(-1)).astype(np.int64)
            scores += np.where(done, 0.0, log_probs[np.arange(b), tokens]).astype(np.float32)
            ended = ~done & (tokens == c.eos_id)
            lengths = np.where(ended, t + 1, lengths)
            done |= ended
            out[:, t] = tokens
            if done.all():
                break
        results = []
        for i in range(b):
            seq = out[i, : lengths[i]].tolist()
            finished = bool(done[i])
            results.append(Hypothesis(seq[:-1] if finished else seq, float(scores[i]), finished))
        return results

    def translate(
        self, sentences: Sequence[str | Sequence[str]], *, max_len: int | None = None
    ) -> list[list[str]]:
        """Translate sentences (strings split on runs of spaces, or word lists) to target word lists."""
        if isinstance(sentences, str):
            raise TypeError("translate takes a list of sentences, got one string")
        words = [tokenize(s) if isinstance(s, str) else list(s) for s in sentences]
        if not words:
            return []
        for w in words:
            if not w:
                raise ValueError("cannot translate an empty sentence")
        ids = np.full((len(words), max(map(len, words))), self.config.pad_id, np.int64)
        for r, w in enumerate(words):
            ids[r, : len(w)] = self.source_vocab.encode(w)
        hyps = self.greedy(ids, ids != self.config.pad_id, max_len=max_len)
        return [self.target_vocab.decode(h.tokens) for h in hyps]
