"""Compute types: quality on a trained model, and decoding speed against CTranslate2.

Quality (``quality``): a model directory of ``crossattn train`` / ``crossattn demo`` and the toy
corpus it was trained on; for every compute type, test exact match and corpus BLEU of greedy
translations, the AER of the alignments read off the force-decoded cross-attention (the model's
extraction, as ``crossattn demo`` reports it), how many greedy tokens equal float32's, and the
bytes of the prepared cross-attention memory of the test set::

    python benchmarks/bench_compute_types.py quality --model demo-out/model \\
        --data demo-out/data --out benchmarks/results/compute_types_quality.json

Int8 kernels (``kernels``): one Linear at the decoder's sizes in float32, bfloat16 and through
each int8 kernel of `Int8Linear` (FBGEMM's dynamic-quantised linear, ``torch._int_mm`` with
per-row activation quantisation)::

    python benchmarks/bench_compute_types.py kernels --threads 1

Speed (``speed``): the model of issue 9's table (pre-norm d_model 256, 4 heads, 3+3 layers, FFN
1024, vocabulary 600, random weights, EOS never produced), batch 32 x 20 source tokens, exactly
22 new tokens, greedy and beam 4, 1 and 2 threads; crossattn at each compute type and, when
``ctranslate2`` is installed, CTranslate2 float32 and int8 on the same weights (its output bias
is -inf on PAD, BOS and EOS as ours). The variants alternate within each repeat; medians::

    python benchmarks/bench_compute_types.py speed --repeats 5 \\
        --out benchmarks/results/compute_types_speed.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from crossattn.compute_types import COMPUTE_TYPES
from crossattn.models import Seq2SeqConfig, Seq2SeqTransformer, beam_search, greedy_decode
from crossattn.models import quantize as quantize_model
from crossattn.models.quantize import prepared_nbytes


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------ quality
def quality(args: argparse.Namespace) -> dict:
    import sacrebleu

    from crossattn.align import aer, extract_alignment
    from crossattn.data.parallel import read_parallel
    from crossattn.models import Translator
    from crossattn.training import Encoded, attention_for_pairs

    data = Path(args.data)
    examples = list(read_parallel(str(data / "test.txt"),
                                  alignments=str(data / "test.align")).examples)  # fmt: skip
    refs = [" ".join(e.target) for e in examples]
    rows, float_tokens = {}, None
    for ct in args.compute_types:
        tr = Translator.load(args.model, compute_type=ct)
        t0 = time.perf_counter()
        res = tr.translate_batch([e.source for e in examples], beam=1)
        seconds = time.perf_counter() - t0
        hyps = [r.translation for r in res]
        pairs = [Encoded(tuple(tr.source_vocab.encode(e.source)),
                         tuple(tr.target_vocab.encode(e.target)), frozenset())
                 for e in examples]  # fmt: skip
        weights = attention_for_pairs(tr.model, pairs)
        links = [extract_alignment(w, tr.extraction, len(e.source), len(e.target))
                 for w, e in zip(weights, examples)]  # fmt: skip
        ids, mask = tr._source([tuple(e.source) for e in examples])
        with torch.no_grad():
            contexts = tr.model.prepare_contexts(tr.model.encode(ids, mask), mask)
        tokens = [r.target_tokens for r in res]
        if float_tokens is None:
            float_tokens = tokens
        same = sum(a == b for x, y in zip(tokens, float_tokens) for a, b in zip(x, y))
        rows[ct] = {
            "exact_match": 100 * sum(h == r for h, r in zip(hyps, refs)) / len(refs),
            "bleu": float(sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score),
            "aer": 100 * aer(examples, links).aer,
            "context_bytes": prepared_nbytes(contexts),
            "sentences_equal_to_first": sum(a == b for a, b in zip(tokens, float_tokens)),
            "tokens_equal_to_first": same,
            "tokens_first": sum(len(x) for x in float_tokens),
            "greedy_seconds": seconds,
        }
        print(ct, {k: round(v, 3) if isinstance(v, float) else v for k, v in rows[ct].items()},
              flush=True)  # fmt: skip
    return {"model": args.model, "test_pairs": len(examples), "results": rows}


# -------------------------------------------------------------------------------------- speed
def bench_model(seed: int = 0) -> Seq2SeqTransformer:
    """Issue 9's model with random weights, untied, whose output never produces EOS."""
    torch.manual_seed(seed)
    config = Seq2SeqConfig(600, 600, d_model=256, heads=4, encoder_layers=3, decoder_layers=3,
                           dim_ff=1024, dropout=0.0, tie_embeddings=False)  # fmt: skip
    model = Seq2SeqTransformer(config).eval()
    out = torch.nn.Linear(256, 600, bias=True)
    with torch.no_grad():
        out.weight.copy_(model.output.weight)
        out.bias.zero_()
        out.bias[config.eos_id] = float("-inf")
    model.output = out
    return model


def ctranslate2_model(model: Seq2SeqTransformer, directory: str, quantization: str) -> None:
    """Write `model` as a CTranslate2 directory (the weights copied by name)."""
    from ctranslate2.specs import transformer_spec

    w = {k: v.detach().float() for k, v in model.state_dict().items()}
    c = model.config

    def linear(spec, weight, bias=None):
        spec.weight = weight.numpy()
        if bias is not None:
            spec.bias = bias.numpy()

    def norm(spec, name):
        spec.gamma, spec.beta = w[f"{name}.weight"].numpy(), w[f"{name}.bias"].numpy()

    def attention(spec, prefix, norm_name, self_attention):
        q, k, v = (w[f"{prefix}.to_{n}.weight"] for n in "qkv")
        qb, vb, kb = w[f"{prefix}.to_q.bias"], w[f"{prefix}.to_v.bias"], torch.zeros(c.d_model)
        if self_attention:
            linear(spec.linear[0], torch.cat([q, k, v]), torch.cat([qb, kb, vb]))
        else:
            linear(spec.linear[0], q, qb)
            linear(spec.linear[1], torch.cat([k, v]), torch.cat([kb, vb]))
        linear(spec.linear[-1], w[f"{prefix}.to_out.weight"], w[f"{prefix}.to_out.bias"])
        norm(spec.layer_norm, norm_name)

    def ffn(spec, p):
        linear(spec.linear_0, w[f"{p}.ffn.linear_in.weight"], w[f"{p}.ffn.linear_in.bias"])
        linear(spec.linear_1, w[f"{p}.ffn.linear_out.weight"], w[f"{p}.ffn.linear_out.bias"])
        norm(spec.layer_norm, f"{p}.ffn_block.norm")

    positions = model.positions.float().numpy()
    enc = transformer_spec.TransformerEncoderSpec(c.encoder_layers, c.heads, pre_norm=True)
    dec = transformer_spec.TransformerDecoderSpec(c.decoder_layers, c.heads, pre_norm=True)
    enc.embeddings[0].weight = w["source_embed.weight"].numpy()
    dec.embeddings.weight = w["target_embed.weight"].numpy()
    for side in (enc, dec):
        side.position_encodings.encodings = positions
        side.scale_embeddings = True
    for i, layer in enumerate(enc.layer):
        attention(layer.self_attention, f"encoder.{i}.self_attn", f"encoder.{i}.attn_block.norm",
                  True)  # fmt: skip
        ffn(layer.ffn, f"encoder.{i}")
    for i, layer in enumerate(dec.layer):
        p = f"decoder.{i}"
        attention(layer.self_attention, f"{p}.self_attn", f"{p}.self_block.norm", True)
        attention(layer.attention, f"{p}.cross_attn_target_to_source", f"{p}.cross_block.norm",
                  False)  # fmt: skip
        ffn(layer.ffn, p)
    norm(enc.layer_norm, "encoder_norm")
    norm(dec.layer_norm, "decoder_norm")
    bias = w["output.bias"].clone()
    bias[[c.pad_id, c.bos_id, c.eos_id]] = float("-inf")
    linear(dec.projection, w["output.weight"], bias)
    spec = transformer_spec.TransformerSpec(enc, dec)
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = "<unk>", "<s>", "</s>"
    spec.config.decoder_start_token = "<s>"
    vocab = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(4, c.target_vocab_size)]
    spec.register_source_vocabulary(vocab)
    spec.register_target_vocabulary(vocab)
    spec.validate()
    spec.optimize(quantization=quantization)
    os.makedirs(directory, exist_ok=True)
    spec.save(directory)


def speed(args: argparse.Namespace) -> dict:
    b, s, new = 32, 20, 22
    model = bench_model()
    torch.manual_seed(1)
    src = torch.randint(4, 600, (b, s))
    mask = torch.ones_like(src, dtype=torch.bool)
    ours = {ct: quantize_model(model, ct) for ct in args.compute_types}
    runners = {}
    for ct, m in ours.items():
        runners[f"crossattn {ct}", "greedy"] = lambda m=m: greedy_decode(m, src, mask, max_len=new)
        runners[f"crossattn {ct}", "beam 4"] = lambda m=m: beam_search(
            m, src, mask, beam_size=4, max_len=new
        )
    ct2_dirs = {}
    try:
        import ctranslate2
    except ImportError:
        ctranslate2 = None
        print("ctranslate2 is not installed: crossattn only", file=sys.stderr)
    tmp = tempfile.TemporaryDirectory()
    if ctranslate2 is not None:
        tokens = [[f"w{i}" for i in row] for row in src.tolist()]
        for q in ("float32", "int8"):
            ct2_dirs[q] = os.path.join(tmp.name, q)
            ctranslate2_model(model, ct2_dirs[q], q)
    results: dict = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        engines = dict(runners)
        for q, d in ct2_dirs.items():
            tr = ctranslate2.Translator(d, device="cpu", compute_type=q, intra_threads=threads)
            for search, beam in (("greedy", 1), ("beam 4", 4)):
                engines[f"CTranslate2 {q}", search] = lambda tr=tr, beam=beam: tr.translate_batch(
                    tokens, beam_size=beam, max_decoding_length=new, min_decoding_length=new,
                    max_batch_size=b,
                )  # fmt: skip
        times: dict = {k: [] for k in engines}
        for fn in engines.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for k, fn in engines.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        for (engine, search), ts in times.items():
            rate = b * new / statistics.median(ts)
            results.setdefault(f"{threads} thread(s) {search}", {})[engine] = rate
            print(f"{threads} thread(s) {search:7} {engine:28} {rate:9,.0f} tok/s", flush=True)
        print(f"load average: {load_average()}", flush=True)
    tmp.cleanup()
    return {"tokens_per_s": results, "batch": b, "source_len": s, "new_tokens": new}


def kernels(args: argparse.Namespace) -> dict:
    """One Linear at the decoder's sizes: float32, bfloat16 and each int8 kernel, alternated."""
    from crossattn.models.int8_linear import KERNELS, Int8Linear, int8_kernel_reason

    torch.set_num_threads(args.threads[0])
    shapes = [(32, 256, 768), (32, 1024, 256), (128, 256, 1024), (128, 256, 600)]
    results = {}
    for m, k, n in shapes:
        lin = torch.nn.Linear(k, n)
        x = torch.randn(m, k)
        variants = {"float32": (lin, x), "bfloat16": (copy.deepcopy(lin).bfloat16(), x.bfloat16())}
        for kernel in KERNELS:
            if int8_kernel_reason(kernel) is None:
                variants[f"int8 {kernel}"] = (Int8Linear.from_float(lin, kernel=kernel), x)
        times: dict = {name: [] for name in variants}
        with torch.no_grad():
            for _ in range(args.repeats):
                for name, (layer, inp) in variants.items():
                    layer(inp)
                    t0 = time.perf_counter()
                    for _ in range(50):
                        layer(inp)
                    times[name].append((time.perf_counter() - t0) / 50 * 1e6)
        row = {name: statistics.median(ts) for name, ts in times.items()}
        results[f"{m}x{k}x{n}"] = row
        print(f"({m} x {k}) @ ({k} x {n}):", ", ".join(f"{a} {b:.0f} us" for a, b in row.items()),
              flush=True)  # fmt: skip
    print(f"load average: {load_average()}", flush=True)
    return {"microseconds": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--model", required=True)
    q.add_argument("--data", required=True, help="folder with test.txt and test.align")
    sp = sub.add_parser("speed")
    sp.add_argument("--repeats", type=int, default=5)
    sp.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    kn = sub.add_parser("kernels")
    kn.add_argument("--repeats", type=int, default=7)
    kn.add_argument("--threads", type=int, nargs=1, default=[1])
    for p in (q, sp, kn):
        p.add_argument("--compute-types", nargs="+", default=list(COMPUTE_TYPES))
        p.add_argument("--out", help="JSON file to write")
    args = parser.parse_args()
    start = load_average()
    result = {"quality": quality, "speed": speed, "kernels": kernels}[args.what](args)
    result.update(command=" ".join(sys.argv), load_average_start=start,
                  load_average_end=load_average(), torch=torch.__version__)  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
