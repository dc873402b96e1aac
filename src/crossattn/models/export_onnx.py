"""Export a `Seq2SeqTransformer` as two ONNX graphs: the encoder, and one decoder step.

The graphs are traced from small modules of their own (`OnnxEncoder`, `OnnxDecoderStep`) that
hold copies of the model's weights, read by parameter name, and write the computation out in
plain tensor math; they do not call the model's layers, so changes to how the layers run (fused
projections, another cache) do not change the export. Before anything is written, onnxruntime
runs both graphs on a small padded batch and their log-probabilities are compared with the
model's own (`check_graphs`).

Shapes (L decoder layers, H heads, Dh = d_model / H, B rows, S source tokens, P past steps):

- ``encoder.onnx``: ``source_ids`` (B, S) int64, ``source_mask`` (B, S) bool (True = valid
  token) -> ``cross_keys``, ``cross_values`` (L, B, H, S, Dh) float32: the encoder output
  projected to every decoder layer's cross-attention keys and values (the prepared context).
- ``decoder_step.onnx``: ``tokens`` (B,) int64 (the previous token; ``<s>`` first),
  ``self_keys``, ``self_values`` (L, B, H, P, Dh) (the decoder self-attention keys and values of
  the P earlier steps; P = 0 at the first step), ``cross_keys``, ``cross_values``,
  ``source_mask`` -> ``log_probs`` (B, V) (``<pad>`` and ``<s>`` at -inf, as our decoding
  never produces them), ``new_self_keys``, ``new_self_values`` (L, B, H, P + 1, Dh). The step's
  position is P, read from the cache's shape.

`crossattn.models.export_onnx_runner.OnnxTranslator` runs them with onnxruntime.

Example::

    from crossattn.models.checkpoint import load_model
    from crossattn.models.export_onnx import export_onnx

    model, source_vocab, target_vocab = load_model("demo-out/model")
    export_onnx(model, source_vocab, target_vocab, "demo-out/onnx")
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .export_common import (
    check_out_dir,
    check_vocabularies,
    model_weights,
    norm_eps,
    require,
    staged_directory,
)
from .seq2seq import Seq2SeqTransformer
from .vocab import Vocabulary

OPSET = 17
ENCODER_FILE = "encoder.onnx"
STEP_FILE = "decoder_step.onnx"
CONFIG_FILE = "config.json"
SOURCE_VOCAB_FILE = "source_vocab.json"
TARGET_VOCAB_FILE = "target_vocab.json"
FORMAT = "crossattn-onnx"
FORMAT_VERSION = 1


class _Weights(nn.Module):
    """The model's weights as buffers, under their names with ``.`` replaced by ``__``."""

    def __init__(self, weights: dict[str, Tensor]):
        super().__init__()
        for name, value in weights.items():
            self.register_buffer(name.replace(".", "__"), value)

    def __getitem__(self, name: str) -> Tensor:
        return getattr(self, name.replace(".", "__"))


class _Math(nn.Module):
    """The Transformer computation shared by both graphs, in plain tensor operations."""

    def __init__(self, model: Seq2SeqTransformer):
        super().__init__()
        c = model.config
        self.w = _Weights(model_weights(model))
        self.register_buffer("positions", model.positions.detach().to("cpu", torch.float32))
        self.heads, self.d_model, self.eps = c.heads, c.d_model, norm_eps(model)
        self.dim_head = c.d_model // c.heads
        self.norm_first = c.norm_first
        self.encoder_layers, self.decoder_layers = c.encoder_layers, c.decoder_layers
        never = torch.zeros(c.target_vocab_size)
        never[[c.pad_id, c.bos_id]] = float("-inf")  # never produced, as in our decoding
        self.register_buffer("never", never)

    def linear(self, x: Tensor, name: str, bias: bool = True) -> Tensor:
        return F.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"] if bias else None)

    def norm(self, x: Tensor, name: str) -> Tensor:
        return F.layer_norm(
            x, (self.d_model,), self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps
        )

    def heads_of(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, H, n, Dh)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        """q (B, H, L, Dh), k / v (B, H, S, Dh), key_mask (B, S) bool -> (B, L, H * Dh)."""
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dim_head)  # (B, H, L, S)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        out = scores.softmax(-1) @ v  # (B, H, L, Dh)
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, self.d_model)

    def residual(self, x: Tensor, norm: str, sublayer) -> Tensor:
        """Pre-norm x + f(norm(x)), or post-norm norm(x + f(x))."""
        if self.norm_first:
            return x + sublayer(self.norm(x, norm))
        return self.norm(x + sublayer(x), norm)

    def ffn(self, x: Tensor, prefix: str) -> Tensor:
        hidden = F.relu(self.linear(x, f"{prefix}.ffn.linear_in"))
        return self.linear(hidden, f"{prefix}.ffn.linear_out")

    def embed(self, table: str, ids: Tensor, positions: Tensor) -> Tensor:
        """ids (B, n) -> (B, n, D): the scaled embedding plus positions (n, D)."""
        return F.embedding(ids, self.w[table]) * math.sqrt(self.d_model) + positions


class OnnxEncoder(nn.Module):
    """source_ids (B, S), source_mask (B, S) -> cross_keys, cross_values (L, B, H, S, Dh)."""

    def __init__(self, model: Seq2SeqTransformer):
        super().__init__()
        self.m = _Math(model)

    def forward(self, source_ids: Tensor, source_mask: Tensor) -> tuple[Tensor, Tensor]:
        m = self.m
        x = m.embed("source_embed.weight", source_ids, m.positions[: source_ids.shape[1]])
        for i in range(m.encoder_layers):
            p = f"encoder.{i}"

            def self_attention(h: Tensor, p: str = p) -> Tensor:
                q = m.heads_of(m.linear(h, f"{p}.self_attn.to_q"))
                k = m.heads_of(m.linear(h, f"{p}.self_attn.to_k", bias=False))
                v = m.heads_of(m.linear(h, f"{p}.self_attn.to_v"))
                return m.linear(m.attend(q, k, v, source_mask), f"{p}.self_attn.to_out")

            x = m.residual(x, f"{p}.attn_block.norm", self_attention)
            x = m.residual(x, f"{p}.ffn_block.norm", lambda h, p=p: m.ffn(h, p))
        if m.norm_first:
            x = m.norm(x, "encoder_norm")
        keys, values = [], []
        valid = source_mask[:, None, :, None]  # (B, 1, S, 1): padded keys and values are zero
        for i in range(m.decoder_layers):
            a = f"decoder.{i}.cross_attn_target_to_source"
            k = m.heads_of(m.linear(x, f"{a}.to_k", bias=False))  # (B, H, S, Dh)
            v = m.heads_of(m.linear(x, f"{a}.to_v"))
            keys.append(torch.where(valid, k, 0.0))
            values.append(torch.where(valid, v, 0.0))
        return torch.stack(keys), torch.stack(values)  # (L, B, H, S, Dh)


class OnnxDecoderStep(nn.Module):
    """One greedy step: the next token's log-probabilities and the extended self-attention cache.

    tokens (B,), self_keys / self_values (L, B, H, P, Dh), cross_keys / cross_values
    (L, B, H, S, Dh), source_mask (B, S) -> log_probs (B, V), new_self_keys / new_self_values
    (L, B, H, P + 1, Dh).
    """

    def __init__(self, model: Seq2SeqTransformer):
        super().__init__()
        self.m = _Math(model)

    def forward(
        self,
        tokens: Tensor,
        self_keys: Tensor,
        self_values: Tensor,
        cross_keys: Tensor,
        cross_values: Tensor,
        source_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        m = self.m
        past = self_keys.shape[3]
        position = m.positions.narrow(0, past, 1)  # (1, D): this step's position
        x = m.embed("target_embed.weight", tokens[:, None], position)  # (B, 1, D)
        new_keys, new_values = [], []
        for i in range(m.decoder_layers):
            p = f"decoder.{i}"

            def self_attention(h: Tensor, i: int = i, p: str = p) -> Tensor:
                q = m.heads_of(m.linear(h, f"{p}.self_attn.to_q"))
                k = m.heads_of(m.linear(h, f"{p}.self_attn.to_k", bias=False))  # (B, H, 1, Dh)
                v = m.heads_of(m.linear(h, f"{p}.self_attn.to_v"))
                k = torch.cat([self_keys[i], k], 2)  # (B, H, P + 1, Dh)
                v = torch.cat([self_values[i], v], 2)
                new_keys.append(k)
                new_values.append(v)
                return m.linear(m.attend(q, k, v, None), f"{p}.self_attn.to_out")

            def cross_attention(h: Tensor, i: int = i, p: str = p) -> Tensor:
                a = f"{p}.cross_attn_target_to_source"
                q = m.heads_of(m.linear(h, f"{a}.to_q"))
                out = m.attend(q, cross_keys[i], cross_values[i], source_mask)
                return m.linear(out, f"{a}.to_out")

            x = m.residual(x, f"{p}.self_block.norm", self_attention)
            x = m.residual(x, f"{p}.cross_block.norm", cross_attention)
            x = m.residual(x, f"{p}.ffn_block.norm", lambda h, p=p: m.ffn(h, p))
        if m.norm_first:
            x = m.norm(x, "decoder_norm")
        logits = F.linear(x[:, 0], m.w["output.weight"], m.never)  # (B, V)
        return logits.log_softmax(-1), torch.stack(new_keys), torch.stack(new_values)


def _example_inputs(model: Seq2SeqTransformer) -> tuple[tuple, tuple]:
    """Encoder and step inputs of odd sizes (B 2, S 3, P 2), for tracing and checking."""
    c = model.config
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, c.source_vocab_size, (2, 3), generator=gen)
    ids[1, 2] = c.pad_id
    mask = ids != c.pad_id
    shape = (c.decoder_layers, 2, c.heads, 2, c.d_model // c.heads)
    keys, values = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    cross_k = torch.randn(shape[:3] + (3,) + shape[4:], generator=gen)
    cross_v = torch.randn(cross_k.shape, generator=gen)
    tokens = torch.tensor([c.bos_id, min(5, c.target_vocab_size - 1)])
    return (ids, mask), (tokens, keys, values, cross_k, cross_v, mask)


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _export(
    module: nn.Module, args: tuple, names: tuple, outputs: tuple, axes: dict, dynamo: bool
) -> bytes:
    """One graph, serialized: traced (TorchScript exporter) or captured by torch.export."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        warnings.simplefilter("ignore")  # tracer and deprecation chatter about the exporter
        if not dynamo:
            buffer = io.BytesIO()
            torch.onnx.export(
                module, args, buffer, input_names=list(names), output_names=list(outputs),
                dynamic_axes=axes, opset_version=OPSET, dynamo=False,
            )  # fmt: skip
            return buffer.getvalue()
        for name in ("torch.onnx", "onnxscript", "onnx_ir"):  # progress and fallback notes
            stack.enter_context(_quiet_logger(name))
        dims: dict[str, torch.export.Dim] = {}
        shapes = {
            name: {i: dims.setdefault(d, torch.export.Dim(d)) for i, d in axes[name].items()}
            for name in names
        }
        program = torch.onnx.export(
            module, args, input_names=list(names), output_names=list(outputs),
            dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, verbose=False,
        )  # fmt: skip
        return program.model_proto.SerializeToString()


def onnx_graphs(model: Seq2SeqTransformer, *, dynamo: bool = False) -> tuple[bytes, bytes]:
    """The serialized ONNX encoder and decoder-step graphs (opset 17) of a model.

    Args:
        model: the translator.
        dynamo: capture the modules with `torch.export` (``torch.onnx.export(dynamo=True)``,
            needs onnxscript) instead of tracing them with the TorchScript-based exporter.

    Raises:
        ImportError: onnx is not installed.
        TypeError / ValueError: not a `Seq2SeqTransformer` whose parameters the exporter knows.
    """
    require("onnx", "exporting to ONNX")
    if dynamo:
        require("onnxscript", "exporting to ONNX with dynamo=True")
    encoder, step = OnnxEncoder(model).eval(), OnnxDecoderStep(model).eval()
    enc_args, step_args = _example_inputs(model)
    src = {0: "batch", 1: "source_length"}
    cache = {1: "batch", 3: "past"}
    cross = {1: "batch", 3: "source_length"}
    with torch.no_grad():
        encoder_graph = _export(
            encoder, enc_args, ("source_ids", "source_mask"), ("cross_keys", "cross_values"),
            {"source_ids": src, "source_mask": src, "cross_keys": cross, "cross_values": cross},
            dynamo,
        )  # fmt: skip
        step_graph = _export(
            step, step_args,
            ("tokens", "self_keys", "self_values", "cross_keys", "cross_values", "source_mask"),
            ("log_probs", "new_self_keys", "new_self_values"),
            {"tokens": {0: "batch"}, "self_keys": cache, "self_values": cache,
             "cross_keys": cross, "cross_values": cross, "source_mask": src,
             "log_probs": {0: "batch"}, "new_self_keys": {1: "batch", 3: "past_plus_one"},
             "new_self_values": {1: "batch", 3: "past_plus_one"}},
            dynamo,
        )  # fmt: skip
    return encoder_graph, step_graph


def check_graphs(
    model: Seq2SeqTransformer, encoder_graph: bytes, step_graph: bytes, steps: int = 3
) -> float:
    """Run the graphs with onnxruntime on a small padded batch for `steps` greedy steps, and
    compare each step's log-probabilities with the model's own (teacher-forced on the same
    prefix).

    Returns:
        The largest absolute difference of the finite log-probabilities.

    Raises:
        ImportError: onnxruntime is not installed.
        ValueError: the graphs and the model disagree by more than 1e-3 (float32 rounding of
            these tiny inputs stays below 1e-5), or not on which log-probabilities are -inf.
    """
    ort = require("onnxruntime", "checking an ONNX export")
    import numpy as np

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    enc = ort.InferenceSession(encoder_graph, options, providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(step_graph, options, providers=["CPUExecutionProvider"])
    (ids, mask), (_, keys, _, _, _, _) = _example_inputs(model)
    cross_k, cross_v = enc.run(None, {"source_ids": ids.numpy(), "source_mask": mask.numpy()})
    self_k = self_v = np.zeros(keys.shape[:3] + (0,) + keys.shape[4:], np.float32)
    prefix = torch.full((ids.shape[0], 1), model.config.bos_id)
    device, training, worst = next(model.parameters()).device, model.training, 0.0
    try:
        model.eval()
        for _ in range(steps):
            feed = {
                "tokens": prefix[:, -1].numpy(),
                "self_keys": self_k,
                "self_values": self_v,
                "cross_keys": cross_k,
                "cross_values": cross_v,
                "source_mask": mask.numpy(),
            }
            log_probs, self_k, self_v = step.run(None, feed)
            with torch.no_grad():
                logits = model(ids.to(device), mask.to(device), prefix.to(device)).logits
            ref = logits[:, -1].float().cpu()
            ref[:, [model.config.pad_id, model.config.bos_id]] = float("-inf")
            ref = ref.log_softmax(-1)
            got = torch.from_numpy(log_probs)
            if not torch.equal(got.isfinite(), ref.isfinite()):
                raise ValueError("the exported decoder step and the model disagree on -inf")
            worst = max(worst, float((got - ref)[ref.isfinite()].abs().max()))
            prefix = torch.cat([prefix, got.argmax(-1, keepdim=True)], 1)
    finally:
        model.train(training)
    if worst > 1e-3:
        raise ValueError(
            f"the exported graphs' log-probabilities differ from the model's by {worst:.3g} "
            "(> 1e-3): the model computes something the exporter does not know"
        )
    return worst


def export_config(model: Seq2SeqTransformer) -> dict:
    """What `OnnxTranslator` needs besides the graphs: the model config and the file names."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "opset": OPSET,
        "model": model.config.to_dict(),
        "encoder": ENCODER_FILE,
        "decoder_step": STEP_FILE,
        "source_vocab": SOURCE_VOCAB_FILE,
        "target_vocab": TARGET_VOCAB_FILE,
    }


def export_onnx(
    model: Seq2SeqTransformer,
    source_vocab: Vocabulary,
    target_vocab: Vocabulary,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    model_dir: str | os.PathLike | None = None,
    check: bool = True,
    dynamo: bool = False,
) -> Path:
    """Write the encoder and decoder-step graphs, the config and both vocabularies to `out`.

    Args:
        model, source_vocab, target_vocab: the translator and its vocabularies.
        out: the directory to write (``encoder.onnx``, ``decoder_step.onnx``, ``config.json``,
            ``source_vocab.json``, ``target_vocab.json``).
        overwrite: replace `out` if it exists (otherwise an existing `out` is refused).
        model_dir: the directory the model was read from, which `out` may not be, hold or lie
            inside (None: no such check).
        check: run the graphs with onnxruntime and compare them with the model before writing
            (`check_graphs`; needs onnxruntime).
        dynamo: capture the graphs with `torch.export` instead of the TorchScript-based tracer
            (see `onnx_graphs`).

    Returns:
        `out` as a Path; written beside it and renamed into place (a failure leaves `out` as it
        was).

    Raises:
        ImportError: onnx (or, with `check`, onnxruntime) is not installed.
        FileExistsError: `out` exists and `overwrite` is False.
        ValueError: vocabularies of another size than the model's, `out` overlapping
            `model_dir`, or graphs that disagree with the model.
    """
    out = check_out_dir(out, overwrite, protect=model_dir)
    check_vocabularies(model, source_vocab, target_vocab)
    encoder_graph, step_graph = onnx_graphs(model, dynamo=dynamo)
    if check:
        check_graphs(model, encoder_graph, step_graph)
    with staged_directory(out) as staged:
        (staged / ENCODER_FILE).write_bytes(encoder_graph)
        (staged / STEP_FILE).write_bytes(step_graph)
        (staged / CONFIG_FILE).write_text(json.dumps(export_config(model), indent=2) + "\n")
        source_vocab.save(staged / SOURCE_VOCAB_FILE)
        target_vocab.save(staged / TARGET_VOCAB_FILE)
    return out
