"""Cost of recording attention maps with `crossattn.capture.AttentionRecorder`, on the CPU.

Time: the same call with and without a recorder, alternated, median of the repeats, in one
process:
- a stack of crossattn `CrossAttention` layers (weights asked from the op on the call it makes);
- greedy `generate()` of a small BART (SDPA attention; maps recomputed through the op by hooks).
Memory: the bytes a recorder holds for one generation under each reduction (`rec.nbytes`).

Writes benchmarks/results/capture.json and benchmarks/results/capture.md.

    .venv/bin/python benchmarks/bench_capture.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from crossattn import CrossAttention
from crossattn.capture import AttentionRecorder

HERE = Path(__file__).resolve().parent
COMMAND = ".venv/bin/python benchmarks/bench_capture.py"


class Stack(nn.Module):
    def __init__(self, depth: int, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.layers = nn.ModuleList(
            CrossAttention(dim, context_dim, heads=heads, dim_head=dim // heads)
            for _ in range(depth)
        )

    def forward(self, queries, context):
        for layer in self.layers:
            queries = queries + layer(queries, context)
        return queries


def alternate(run_plain, run_recorded, repeats: int) -> tuple[float, float]:
    """Median seconds of each variant, run alternately after one warm-up of each."""
    run_plain()
    run_recorded()
    plain, recorded = [], []
    for _ in range(repeats):
        for fn, times in ((run_plain, plain), (run_recorded, recorded)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(plain), statistics.median(recorded)


def bench_stack(repeats: int) -> dict:
    torch.manual_seed(0)
    cfg = dict(depth=4, dim=256, context_dim=256, heads=8, batch=4, queries=256, context=128)
    model = Stack(cfg["depth"], cfg["dim"], cfg["context_dim"], cfg["heads"]).eval()
    queries = torch.randn(cfg["batch"], cfg["queries"], cfg["dim"])
    context = torch.randn(cfg["batch"], cfg["context"], cfg["context_dim"])
    rows = []
    for heads in ("mean", "all"):

        def plain():
            with torch.no_grad():
                model(queries, context)

        def recorded(heads=heads):
            with torch.no_grad(), AttentionRecorder(model, heads=heads):
                model(queries, context)

        t_plain, t_rec = alternate(plain, recorded, repeats)
        rows.append(dict(heads=heads, plain_ms=1e3 * t_plain, recorded_ms=1e3 * t_rec))
    return dict(config=cfg, rows=rows)


def bart(seed: int = 0):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    config = BartConfig(
        vocab_size=1000, d_model=256, encoder_layers=3, decoder_layers=3,
        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=1024,
        decoder_ffn_dim=1024, max_position_embeddings=256, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
    )  # fmt: skip
    return BartForConditionalGeneration(config).eval()


def bench_generate(repeats: int) -> dict:
    model = bart()
    cfg = dict(d_model=256, layers="3+3", heads=8, batch=4, source=64, new_tokens=32)
    input_ids = torch.randint(3, 1000, (cfg["batch"], cfg["source"]))
    kw = dict(input_ids=input_ids, max_new_tokens=cfg["new_tokens"],
              min_new_tokens=cfg["new_tokens"], do_sample=False)  # fmt: skip

    def plain():
        model.generate(**kw)

    def recorded():
        with AttentionRecorder(model):
            model.generate(**kw)

    t_plain, t_rec = alternate(plain, recorded, repeats)
    sizes = []
    for label, options in (
        ("heads='mean'", {}),
        ("heads='all'", {"heads": "all"}),
        ("heads='all', top_k=4", {"heads": "all", "top_k": 4}),
        ("heads='mean', dtype=float16", {"dtype": torch.float16}),
        ("heads='mean', steps=range(0, 32, 8)", {"steps": range(0, 32, 8)}),
    ):
        with AttentionRecorder(model, **options) as rec:
            model.generate(**kw)
        sizes.append(dict(reduction=label, bytes=rec.nbytes))
    return dict(config=cfg, plain_ms=1e3 * t_plain, recorded_ms=1e3 * t_rec, recorded_bytes=sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = dict(
        command=COMMAND,
        machine=f"{platform.machine()} CPU, torch {torch.__version__}, 2 threads",
        stack=bench_stack(args.repeats),
        generate=bench_generate(max(3, args.repeats // 2)),
    )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "capture.json").write_text(json.dumps(result, indent=2) + "\n")
    stack, gen = result["stack"], result["generate"]
    c = stack["config"]
    lines = [
        "## Capture cost",
        "",
        f"Made by `{COMMAND}` ({result['machine']}); medians of alternated runs.",
        "",
        f"CrossAttention stack: {c['depth']} layers, dim {c['dim']}, {c['heads']} heads, "
        f"B={c['batch']}, L={c['queries']}, S={c['context']}, one forward:",
        "",
        "| heads | plain (ms) | recorded (ms) | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in stack["rows"]:
        ratio = r["recorded_ms"] / r["plain_ms"]
        lines.append(
            f"| {r['heads']} | {r['plain_ms']:.1f} | {r['recorded_ms']:.1f} | {ratio:.2f} |"
        )
    g = gen["config"]
    lines += [
        "",
        f"BART (d_model {g['d_model']}, {g['layers']} layers, {g['heads']} heads, SDPA), greedy "
        f"`generate()`, B={g['batch']}, source {g['source']} tokens, {g['new_tokens']} new "
        f"tokens: plain {gen['plain_ms']:.0f} ms, recorded (head mean, maps recomputed by "
        f"hooks) {gen['recorded_ms']:.0f} ms, ratio {gen['recorded_ms'] / gen['plain_ms']:.2f}.",
        "",
        "| reduction | bytes recorded for that generation |",
        "| --- | ---: |",
    ]
    lines += [f"| {s['reduction']} | {s['bytes']:,} |" for s in gen["recorded_bytes"]]
    (out / "capture.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
