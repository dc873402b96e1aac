"""The end of a run: force-decoded cross-attention of the dev pairs, and the extraction config
(`extraction.json`) that `crossattn align` uses, chosen on them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..models.decoding import force_decode_attention
from ..models.seq2seq import PAD_ID, Seq2SeqTransformer
from ..models.vocab import pad_ids
from .batching import Encoded


@torch.no_grad()
def attention_for_pairs(
    model: Seq2SeqTransformer, pairs: Sequence[Encoded], batch_size: int = 64
) -> list[Tensor]:
    """Force-decoded cross-attention (layers, heads, n + 1, S) of every pair (see
    `force_decode_attention`), in the order given."""
    device = next(model.parameters()).device
    out: list[Tensor] = [torch.empty(0)] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i].source), len(pairs[i].target)))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        src = pad_ids([pairs[i].source for i in idx]).to(device)  # (B, S)
        tgt = pad_ids([pairs[i].target for i in idx]).to(device)  # (B, T)
        lengths = torch.tensor([len(pairs[i].target) for i in idx])
        weights = force_decode_attention(model, src, src != PAD_ID, tgt, lengths)
        for r, i in enumerate(idx):
            out[i] = weights[r].cpu()
    return out


def choose_extraction(
    model, dev_set: Sequence[Encoded], dev_examples, with_align: bool, tokenizers=None
):
    """The extraction config for `crossattn align`: chosen on the dev split when it has gold
    links (`crossattn.align.select_extraction`), else `crossattn.align.DEFAULT_EXTRACTION`.
    With subword ``tokenizers`` (source, target), links are extracted between tokens and
    merged into word links before they are scored against the word gold."""
    from ..align import DEFAULT_EXTRACTION, select_extraction

    # only pairs with sure gold links can score a config (AER's recall counts sure links)
    pairs = [(e, ex) for e, ex in zip(dev_set, dev_examples) if ex.sure]
    if not with_align or not pairs:
        return DEFAULT_EXTRACTION
    pairs = pairs[:300]
    weights = attention_for_pairs(model, [e for e, _ in pairs])
    words = [ex for _, ex in pairs]
    if tokenizers is None or all(t.one_token_per_word for t in tokenizers):
        return select_extraction(weights, words)
    source_word_of = [e.word_of for e in tokenizers[0].encode_batch([ex.source for ex in words])]
    target_word_of = [e.word_of for e in tokenizers[1].encode_batch([ex.target for ex in words])]
    return select_extraction(
        weights, words, source_word_of=source_word_of, target_word_of=target_word_of
    )
