"""Export a `Seq2SeqTransformer` with its vocabularies as a CTranslate2 model directory.

The model is described with CTranslate2's spec API (`ctranslate2.specs.TransformerSpec`) and
its weights are copied by parameter name. What the conversion carries over:

- pre-norm or post-norm layers (``Seq2SeqConfig.norm_first``), the final LayerNorms of a
  pre-norm stack, the LayerNorm epsilon;
- embeddings scaled by sqrt(d_model), plus our sinusoidal position table written out as the
  position encodings (its sin / cos columns interleave, which CTranslate2's built-in table does
  not, so the table itself is stored);
- the self-attention Q, K, V projections fused into one matrix (the key projection has no bias:
  its part of the fused bias is zero), the cross-attention K and V fused into one;
- the output projection (the target embedding when they are tied), whose bias is -inf for
  ``<pad>`` and ``<s>``: our decoding never produces them, and neither does CTranslate2's with
  this bias, so its scores equal ours without any decoding option;
- the vocabularies, in id order, with ``<unk>``, ``<s>`` (the decoder start token) and ``</s>``.

Example::

    from crossattn.models.checkpoint import load_model
    from crossattn.models.export_ctranslate2 import export_ctranslate2

    export_ctranslate2(*load_model("demo-out/model"), "demo-out/ct2")
    # ctranslate2.Translator("demo-out/ct2").translate_batch([["the", "red", "car"]], beam_size=1)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import _checks
from . import export_common as common
from .seq2seq import Seq2SeqTransformer
from .vocab import SPECIALS, Vocabulary

QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                 "bfloat16", "float32")  # fmt: skip
"""Weight types CTranslate2 can store (its ``quantization`` argument)."""


def _set_linear(spec, weight, bias=None) -> None:
    spec.weight = weight.numpy()
    if bias is not None:
        spec.bias = bias.numpy()


def _set_norm(spec, w: dict, name: str) -> None:
    spec.gamma = w[f"{name}.weight"].numpy()
    spec.beta = w[f"{name}.bias"].numpy()


def _attention(spec, w: dict, prefix: str, norm: str, self_attention: bool) -> None:
    """Fill one `MultiHeadAttentionSpec` from ``prefix.to_q/to_k/to_v/to_out``."""
    q_w, q_b = w[f"{prefix}.to_q.weight"], w[f"{prefix}.to_q.bias"]
    k_w = w[f"{prefix}.to_k.weight"]
    v_w, v_b = w[f"{prefix}.to_v.weight"], w[f"{prefix}.to_v.bias"]
    k_b = torch.zeros(k_w.shape[0])  # the key projection has no bias
    if self_attention:  # linear[0]: Q, K and V in one matrix (3 D, D)
        _set_linear(spec.linear[0], torch.cat([q_w, k_w, v_w]), torch.cat([q_b, k_b, v_b]))
        out = spec.linear[1]
    else:  # linear[0]: Q; linear[1]: K and V of the memory (2 D, D)
        _set_linear(spec.linear[0], q_w, q_b)
        _set_linear(spec.linear[1], torch.cat([k_w, v_w]), torch.cat([k_b, v_b]))
        out = spec.linear[2]
    _set_linear(out, w[f"{prefix}.to_out.weight"], w[f"{prefix}.to_out.bias"])
    _set_norm(spec.layer_norm, w, norm)


def _ffn(spec, w: dict, prefix: str) -> None:
    _set_linear(spec.linear_0, w[f"{prefix}.ffn.linear_in.weight"],
                w[f"{prefix}.ffn.linear_in.bias"])  # fmt: skip
    _set_linear(spec.linear_1, w[f"{prefix}.ffn.linear_out.weight"],
                w[f"{prefix}.ffn.linear_out.bias"])  # fmt: skip
    _set_norm(spec.layer_norm, w, f"{prefix}.ffn_block.norm")


def ctranslate2_spec(model: Seq2SeqTransformer, source_vocab: Vocabulary, target_vocab: Vocabulary):
    """The `ctranslate2.specs.TransformerSpec` of a model, with its weights and vocabularies.

    Args:
        model: the translator (its weights are copied; the model is not changed).
        source_vocab, target_vocab: its vocabularies (sizes equal to the model's embeddings).

    Raises:
        ImportError: ctranslate2 is not installed.
        TypeError / ValueError: not a `Seq2SeqTransformer`, or vocabularies of another size.
    """
    common.require("ctranslate2", "exporting to CTranslate2")
    from ctranslate2.specs import transformer_spec

    common.check_vocabularies(model, source_vocab, target_vocab)
    w = common.model_weights(model)
    c = model.config
    positions = model.positions.detach().to("cpu", torch.float32).numpy()  # (max_len, D)
    encoder = transformer_spec.TransformerEncoderSpec(
        c.encoder_layers, c.heads, pre_norm=c.norm_first
    )
    decoder = transformer_spec.TransformerDecoderSpec(
        c.decoder_layers, c.heads, pre_norm=c.norm_first
    )
    encoder.embeddings[0].weight = w["source_embed.weight"].numpy()
    encoder.position_encodings.encodings = positions
    encoder.scale_embeddings = True  # * sqrt(d_model), as `Seq2SeqTransformer._embed`
    for i, layer in enumerate(encoder.layer):
        p = f"encoder.{i}"
        _attention(layer.self_attention, w, f"{p}.self_attn", f"{p}.attn_block.norm", True)
        _ffn(layer.ffn, w, p)
    decoder.embeddings.weight = w["target_embed.weight"].numpy()
    decoder.position_encodings.encodings = positions
    decoder.scale_embeddings = True
    for i, layer in enumerate(decoder.layer):
        p = f"decoder.{i}"
        _attention(layer.self_attention, w, f"{p}.self_attn", f"{p}.self_block.norm", True)
        _attention(layer.attention, w, f"{p}.cross_attn_target_to_source",
                   f"{p}.cross_block.norm", False)  # fmt: skip
        _ffn(layer.ffn, w, p)
    if c.norm_first:
        _set_norm(encoder.layer_norm, w, "encoder_norm")
        _set_norm(decoder.layer_norm, w, "decoder_norm")
    never = torch.zeros(c.target_vocab_size)
    never[[c.pad_id, c.bos_id]] = float("-inf")  # our decoding never produces them
    _set_linear(decoder.projection, w["output.weight"], never)
    spec = transformer_spec.TransformerSpec(encoder, decoder)
    spec.config.layer_norm_epsilon = common.norm_eps(model)
    pad, bos, eos, unk = SPECIALS
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = unk, bos, eos
    spec.config.decoder_start_token = bos
    spec.register_source_vocabulary(list(source_vocab.tokens))
    spec.register_target_vocabulary(list(target_vocab.tokens))
    return spec


def export_ctranslate2(
    model: Seq2SeqTransformer,
    source_vocab: Vocabulary,
    target_vocab: Vocabulary,
    out: str | os.PathLike,
    *,
    quantization: str | None = None,
    overwrite: bool = False,
    model_dir: str | os.PathLike | None = None,
) -> Path:
    """Write a CTranslate2 model directory that translates as the model does.

    Args:
        model, source_vocab, target_vocab: the translator and its vocabularies.
        out: the directory to write (``model.bin``, ``config.json`` and both vocabularies).
        quantization: a CTranslate2 weight type (`QUANTIZATIONS`), or None for float32.
        overwrite: replace `out` if it exists (otherwise an existing `out` is refused).
        model_dir: the directory the model was read from, which `out` may not be, hold or lie
            inside (None: no such check).

    Returns:
        `out` as a Path. The directory is written beside `out` and renamed into place, so a
        failed export leaves `out` as it was.

    Raises:
        ImportError: ctranslate2 is not installed.
        FileExistsError: `out` exists and `overwrite` is False.
        ValueError: an unknown `quantization`, or `out` overlapping `model_dir`.
    """
    if quantization is not None:
        _checks.choice(quantization, "quantization", QUANTIZATIONS)
    out = common.check_out_dir(out, overwrite, protect=model_dir)
    spec = ctranslate2_spec(model, source_vocab, target_vocab)
    spec.validate()
    spec.optimize(quantization=quantization)
    with common.staged_directory(out) as staged:
        spec.save(str(staged))
    return out
