"""One AdamW training step of the same model in crossattn, ``torch.nn.Transformer`` and HF Marian.

The model of issue 9: d_model 256, 4 heads, 3+3 layers, FFN 1024, vocabulary 600, dropout 0.1 on
attention probabilities, sub-layer outputs and the FFN activation; batch 64 x (20 source + 22
target) tokens, no padding. Each engine's step is the plain eager step: forward to the logits,
cross-entropy, ``backward``, ``torch.optim.AdamW`` (the same default AdamW for every engine),
in float32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``. crossattn is
`Seq2SeqTransformer` (pre-norm); ``torch.nn.Transformer`` gets embeddings, sinusoidal positions
and an output projection (``norm_first=True``, ``batch_first=True``); HF is ``MarianMTModel``
built from a config (random weights, ``attn_implementation`` chosen with ``--hf-attn``;
``eager,sdpa`` runs both). The engines alternate within each repeat; the table gives medians::

    python benchmarks/bench_train.py --threads 2 --repeats 7 \\
        --out benchmarks/results/train_step.json

``--quick`` runs two repeats and writes nothing unless ``--out`` is given; ``--profile`` prints
the torch.profiler table of crossattn's step instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crossattn.models import Seq2SeqConfig, Seq2SeqTransformer  # noqa: E402
from results_md import cpu_name, write_section  # noqa: E402

D_MODEL, HEADS, LAYERS, FFN, VOCAB, DROPOUT = 256, 4, 3, 1024, 600, 0.1


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class TorchSeq2Seq(nn.Module):
    """``torch.nn.Transformer`` with embeddings, sinusoidal positions and an output projection."""

    def __init__(self, max_len: int = 128):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.transformer = nn.Transformer(
            D_MODEL, HEADS, LAYERS, LAYERS, FFN, DROPOUT, batch_first=True, norm_first=True
        )
        self.output = nn.Linear(D_MODEL, VOCAB, bias=False)
        self.output.weight = self.embed.weight
        self.drop = nn.Dropout(DROPOUT)
        pos = torch.arange(max_len)[:, None] * torch.exp(
            torch.arange(0, D_MODEL, 2) * (-math.log(10000.0) / D_MODEL)
        )
        self.register_buffer("pos", torch.cat([pos.sin(), pos.cos()], -1), persistent=False)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        def emb(ids: Tensor) -> Tensor:
            return self.drop(self.embed(ids) * D_MODEL**0.5 + self.pos[: ids.shape[1]])

        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        out = self.transformer(emb(src), emb(tgt), tgt_mask=mask, tgt_is_causal=True)
        return self.output(out)


def build_engines(
    hf_attn: str,
) -> dict[str, tuple[nn.Module, Callable[[Tensor, Tensor], Tensor]]]:
    """name -> (model, forward(src, tgt_in) -> logits (B, T, V))."""
    config = Seq2SeqConfig(
        VOCAB, VOCAB, d_model=D_MODEL, heads=HEADS, encoder_layers=LAYERS, decoder_layers=LAYERS,
        dim_ff=FFN, dropout=DROPOUT,
    )  # fmt: skip
    ours = Seq2SeqTransformer(config)
    theirs = TorchSeq2Seq()
    engines = {
        "crossattn": (ours, lambda s, t: ours(s, None, t).logits),
        "torch.nn.Transformer": (theirs, theirs),
    }
    try:
        from transformers import MarianConfig, MarianMTModel
    except ImportError:  # a benchmark dependency only
        return engines
    hf_config = MarianConfig(
        vocab_size=VOCAB, d_model=D_MODEL, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN, dropout=DROPOUT, attention_dropout=DROPOUT,
        activation_dropout=DROPOUT, activation_function="relu", max_position_embeddings=128,
        pad_token_id=0, decoder_start_token_id=1, eos_token_id=2,
    )  # fmt: skip
    for impl in hf_attn.split(","):
        hf = MarianMTModel._from_config(hf_config, attn_implementation=impl)
        engines[f"HF Marian ({impl})"] = (hf, _hf_forward(hf))
    return engines


def _hf_forward(hf: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda s, t: hf(input_ids=s, decoder_input_ids=t).logits


def make_step(model: nn.Module, forward, src: Tensor, tgt: Tensor, bf16: bool) -> Callable:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with ctx:
            logits = forward(src, tgt_in)
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten())
        loss.backward()
        opt.step()
        return loss.item()

    return step


def measure(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    src = torch.randint(4, VOCAB, (args.batch, args.source_len))
    tgt = torch.randint(4, VOCAB, (args.batch, args.target_len + 1))
    engines = build_engines(args.hf_attn)
    results: dict = {}
    for precision in ("float32", "bfloat16 autocast"):
        steps = {
            name: make_step(model, fwd, src, tgt, precision != "float32")
            for name, (model, fwd) in engines.items()
        }
        times: dict[str, list[float]] = {name: [] for name in steps}
        for step in steps.values():  # warm-up
            for _ in range(args.warmup):
                step()
        for _ in range(args.repeats):
            for name, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
        results[precision] = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        print(precision, {k: f"{v:.0f} ms" for k, v in results[precision].items()}, flush=True)
    return results


def profile(args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    src = torch.randint(4, VOCAB, (args.batch, args.source_len))
    tgt = torch.randint(4, VOCAB, (args.batch, args.target_len + 1))
    model, fwd = build_engines(args.hf_attn)[args.profile]
    step = make_step(model, fwd, src, tgt, args.bf16)
    for _ in range(args.warmup):
        step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


def table(results: dict, engines: list[str]) -> str:
    ours = "crossattn"
    lines = [
        "| step (ms) | " + " | ".join(engines) + " |",
        "| --- |" + " --- |" * len(engines),
    ]
    for precision, row in results.items():
        cells = [
            f"{row[e]:.0f}" + ("" if e == ours else f" (crossattn {row[e] / row[ours]:.2f}x)")
            for e in engines
        ]
        lines.append(f"| {precision} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--source-len", type=int, default=20)
    parser.add_argument("--target-len", type=int, default=22)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--hf-attn",
        choices=["eager", "sdpa", "eager,sdpa"],
        default="sdpa",
        help="HF attn_implementation; 'eager,sdpa' runs both",
    )
    parser.add_argument("--quick", action="store_true", help="two repeats, one warm-up step")
    parser.add_argument("--profile", metavar="ENGINE", help="profile one engine's step")
    parser.add_argument("--bf16", action="store_true", help="with --profile: under autocast")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--results-md", type=Path, default=Path(__file__).parent / "RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.warmup = 2, 1
    if args.profile:
        profile(args)
        return
    start = load_average()
    results = measure(args)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "processor": cpu_name(),
        "load_average_start": start,
        "load_average_end": load_average(),
        "threads": args.threads,
        "torch": torch.__version__,
        "shape": f"batch {args.batch} x ({args.source_len} + {args.target_len}) tokens",
        "step_ms": results,
    }
    print(json.dumps(result, indent=2))
    if args.quick and args.out is None:
        return
    out = args.out or Path(__file__).parent / "results" / "train_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    engines = list(next(iter(results.values())))
    section = (
        "## Training step (bench_train.py)\n\n"
        f"One AdamW step (forward, cross-entropy, backward, `torch.optim.AdamW`) of the same "
        f"model (pre-norm d_model 256, 4 heads, 3+3 layers, FFN 1024, vocabulary 600, dropout "
        f"0.1 on attention, residual and FFN activation), {result['shape']}, {args.threads} "
        f"threads, medians of {args.repeats} alternated repeats, torch {torch.__version__}, "
        f"{result.get('processor', cpu_name())}. "
        "In parentheses: how many times as fast crossattn's step is.\n\n"
        f"`{result['command']}` (load average {start} at the start, "
        f"{result['load_average_end']} at the end)\n\n" + table(results, engines) + "\n"
    )
    write_section(args.results_md, section)


if __name__ == "__main__":
    main()
