"""Accuracy and speed of HierarchicalCrossAttention against full attention (CPU).

One layer, its weights shared by both paths: full attention is `layer.attn` (the plain
`CrossAttention`, automatic dispatch); hierarchical is `layer` itself. For each top_k:

- rel. error: ||hier - full|| / ||full|| over the whole output (output bias zeroed);
- mass kept: the share of full attention's probability mass that falls inside the selected
  blocks (first 64 queries, all heads), i.e. the recall of the block selection;
- time: median of `--repeats` runs, the variants alternated in one process, no grad.

Two inputs: "random" (i.i.d. Gaussian queries and context, independent random projections:
attention is nearly uniform, the worst case for any selection) and "clustered" (each key block
is drawn around its own centre and each query around the centre of one block, queries in runs
of 16 that look for the same block (locality, as in text or images), with the key
projection tied to the query projection so that scores measure similarity: the structure block
selection relies on).

    .venv/bin/python benchmarks/bench_hierarchical.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from crossattn import cross_attention
from crossattn.layers import HierarchicalCrossAttention
from results_md import write_section

HERE = Path(__file__).resolve().parent
SECTION = "## Hierarchical attention"
COMMAND = ".venv/bin/python benchmarks/bench_hierarchical.py"


def make_inputs(kind: str, b: int, length: int, s: int, dim: int, block: int, gen):
    if kind == "random":
        return torch.randn(b, length, dim, generator=gen), torch.randn(b, s, dim, generator=gen)
    nb = -(-s // block)
    centres = torch.randn(b, nb, dim, generator=gen) * 2.0  # (B, nb, dim)
    context = centres.repeat_interleave(block, dim=1)[:, :s]  # (B, S, dim)
    context = context + torch.randn(b, s, dim, generator=gen)
    run = 16  # queries come in runs of 16 that look for the same block (locality)
    pick = torch.randint(0, nb, (b, -(-length // run)), generator=gen)
    pick = pick.repeat_interleave(run, dim=1)[:, :length]  # (B, L)
    queries = torch.gather(centres, 1, pick[..., None].expand(-1, -1, dim))
    return queries + torch.randn(b, length, dim, generator=gen), context


def mass_kept(layer, queries, context, selection, n: int = 64) -> float:
    """Share of full attention probability inside the selected blocks, first n queries."""
    attn = layer.attn
    with torch.no_grad():
        b, s = context.shape[:2]
        prepared = attn.prepare_context(context)
        q = attn.to_q(queries[:, :n]).view(b, -1, attn.heads, attn.dim_head).transpose(1, 2)
        _, w = cross_attention(q, prepared.key, prepared.value, return_weights=True)  # (B,H,n,S)
        bs, qbs = layer.block_size, layer.query_block_size
        block_of_key = torch.arange(s) // bs  # (S,)
        qblock = torch.arange(q.shape[2]) // qbs  # (n,)
        sel = selection[:, :, qblock]  # (B, H, n, k)
        inside = (block_of_key[None, None, None, :, None] == sel[..., None, :]).any(-1)
        return float((w * inside).sum() / w.sum())


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def measure(kind: str, args, gen: torch.Generator) -> list[dict]:
    """Rows of one input kind: full attention, then each top_k."""
    dim, heads, dim_head = args.heads * args.dim_head, args.heads, args.dim_head
    queries, context = make_inputs(kind, 1, args.queries, args.context, dim, args.block_size, gen)
    layer = HierarchicalCrossAttention(
        dim, heads=heads, dim_head=dim_head, block_size=args.block_size,
        query_block_size=args.query_block_size,
    ).eval()  # fmt: skip
    torch.nn.init.zeros_(layer.attn.to_out.bias)
    if kind == "clustered":
        # Tie the key projection to the query projection so that scores measure similarity,
        # as a trained layer's would; with independent random projections they do not.
        layer.attn.to_k.weight.data.copy_(layer.attn.to_q.weight.data)

    def hier(k: int, ctx):
        layer.top_k = k
        return layer(queries, ctx)

    with torch.no_grad():
        full = layer.attn(queries, context)
        prepared = layer.attn.prepare_context(context)
        variants = {
            "full": lambda: layer.attn(queries, context),
            "full/attn": lambda: layer.attn(queries, prepared),
        }
        results = {}
        for k in args.top_k:
            layer.top_k = k
            out, selection = layer(queries, context, return_selection=True)
            results[k] = {
                "rel_error": float((out - full).norm() / full.norm()),
                "mass_kept": mass_kept(layer, queries, context, selection),
            }
            variants[f"top_k={k}"] = lambda k=k: hier(k, context)
            variants[f"top_k={k}/attn"] = lambda k=k: hier(k, prepared)
        times = {name: [] for name in variants}
        for fn in variants.values():
            fn()  # warm-up
        for _ in range(args.repeats):  # alternate the variants
            for name, fn in variants.items():
                times[name] += timed(fn, 1)
    full_t = statistics.median(times["full"])
    full_a = statistics.median(times["full/attn"])
    rows = [
        {
            "data": kind,
            "variant": "full attention",
            "time_s": full_t,
            "speedup": 1.0,
            "attn_time_s": full_a,
            "attn_speedup": 1.0,
        }
    ]
    for k in args.top_k:
        t = statistics.median(times[f"top_k={k}"])
        ta = statistics.median(times[f"top_k={k}/attn"])
        rows.append(
            {
                "data": kind,
                "variant": f"top_k={k}",
                "fraction_attended": min(1.0, k * args.block_size / args.context),
                "time_s": t,
                "speedup": full_t / t,
                "attn_time_s": ta,
                "attn_speedup": full_a / ta,
                **results[k],
            }
        )
        print(rows[-1], flush=True)
    return rows


def run(args) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    heads, dim_head = args.heads, args.dim_head
    rows = measure("random", args, gen) + measure("clustered", args, gen)
    return {
        "command": COMMAND,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "config": {
            "batch": 1,
            "queries": args.queries,
            "context": args.context,
            "heads": heads,
            "dim_head": dim_head,
            "block_size": args.block_size,
            "query_block_size": args.query_block_size,
            "repeats": args.repeats,
        },
        "rows": rows,
    }


def markdown(result: dict) -> str:
    c = result["config"]
    lines = [
        SECTION,
        "",
        f"`{result['command']}` (torch {result['torch']}, CPU, {result['threads']} threads, "
        f"float32, no grad). B=1, L={c['queries']} queries, S={c['context']} context tokens, "
        f"{c['heads']} heads x {c['dim_head']}, block_size {c['block_size']}, query_block_size "
        f"{c['query_block_size']}; median of {c['repeats']} alternated runs. Full attention: "
        "the same layer's `CrossAttention` (dispatch). rel. error = ||hier - full|| / ||full||; "
        "mass kept = share of full attention's probability inside the selected blocks. "
        "Layer: the whole forward (context projection included, the same in both paths); "
        "attention: keys/values projected beforehand (`PreparedContext`).",
        "",
        "| data | variant | keys attended | rel. error | mass kept | layer (ms) | speed-up "
        "| attention (ms) | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r["variant"] == "full attention":
            lines.append(
                f"| {r['data']} | full attention | 100% | 0 | 1 | {r['time_s'] * 1e3:.1f} | 1.00 "
                f"| {r['attn_time_s'] * 1e3:.1f} | 1.00 |"
            )
        else:
            lines.append(
                f"| {r['data']} | {r['variant']} | {r['fraction_attended']:.1%} | "
                f"{r['rel_error']:.3f} | {r['mass_kept']:.3f} | {r['time_s'] * 1e3:.1f} | "
                f"{r['speedup']:.2f} | {r['attn_time_s'] * 1e3:.1f} | {r['attn_speedup']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--context", type=int, default=16384)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim-head", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--query-block-size", type=int, default=64)
    parser.add_argument("--top-k", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "hierarchical.json")
    parser.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_section(args.results_md, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
