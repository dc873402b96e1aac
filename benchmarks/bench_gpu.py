"""Cross-attention on a CUDA GPU: each backend and dispatch at issue 2's shapes.

Usage: python benchmarks/bench_gpu.py [--out benchmarks/results/bench_gpu.json]
       python benchmarks/bench_gpu.py --table benchmarks/results/bench_gpu_h200.json  (markdown)
Times are medians of CUDA-event timed repeats; memory is the peak allocated beyond the inputs
and the output (torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from crossattn import cross_attention  # noqa: E402

SHAPES = {
    "A": (2, 8, 4096, 77, 64),
    "B": (1, 8, 256, 65536, 64),
    "C": (8, 8, 512, 512, 64),
    "D": (8, 8, 1, 1024, 64),
    "E": (1, 8, 8192, 8192, 64),
}


def naive(q, k, v, key_mask=None):
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.softmax(s.float(), -1).to(q.dtype) @ v


def _variants(q, k, v, km):
    return {
        "dispatch": lambda: cross_attention(q, k, v, key_mask=km),
        "sdpa": lambda: cross_attention(q, k, v, key_mask=km, backend="sdpa"),
        "chunked": lambda: cross_attention(q, k, v, key_mask=km, backend="chunked"),
        "naive": lambda: naive(q, k, v, km),
        "dispatch+mean weights": lambda: cross_attention(
            q, k, v, key_mask=km, return_weights="mean"
        ),
    }


def measure(fn, repeats=20):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    extra = (
        torch.cuda.max_memory_allocated()
        - base
        - (out[0] if isinstance(out, tuple) else out).nbytes
    )
    return statistics.median(times), max(0, extra) / 2**20


def table(path: str) -> str:
    """A markdown table (ms, and extra MiB) from a saved JSON run."""
    data = json.loads(Path(path).read_text())
    variants = ["dispatch", "sdpa", "chunked", "naive", "dispatch+mean weights"]
    lines = [
        f"{data['device']}, torch {data['torch']}: median ms (peak extra MiB beyond the output)",
        "",
        "| dtype | shape | " + " | ".join(variants) + " |",
        "| --- | --- |" + " --- |" * len(variants),
    ]
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in data["rows"]:
        cells.setdefault((r["dtype"], r["shape"]), {})[r["variant"]] = (
            f"{r['ms']:.3f} ({r['extra_mib']:.0f})"
        )
    for (dtype, shape), row in cells.items():
        lines.append(
            f"| {dtype} | {shape} | " + " | ".join(row.get(v, "") for v in variants) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/bench_gpu.json")
    parser.add_argument("--table", help="print the markdown table of a saved run and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    rows = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for shape_name, (b, h, length, s, e) in SHAPES.items():
            g = torch.Generator(device=dev).manual_seed(0)
            q = torch.randn(b, h, length, e, device=dev, dtype=dtype, generator=g)
            k = torch.randn(b, h, s, e, device=dev, dtype=dtype, generator=g)
            v = torch.randn(b, h, s, e, device=dev, dtype=dtype, generator=g)
            km = None
            if shape_name == "C":
                km = torch.arange(s, device=dev)[None, :] < torch.randint(
                    s // 2, s + 1, (b, 1), device=dev
                )
            variants = _variants(q, k, v, km)
            for variant, fn in variants.items():
                try:
                    ms, mib = measure(fn)
                except torch.OutOfMemoryError:
                    ms, mib = float("nan"), float("nan")
                rows.append(
                    dict(
                        device=name,
                        dtype=str(dtype).removeprefix("torch."),
                        shape=shape_name,
                        variant=variant,
                        ms=ms,
                        extra_mib=mib,
                    )
                )
                print(
                    f"{name} {rows[-1]['dtype']:>8} {shape_name} {variant:<22} {ms:9.3f} ms {mib:9.1f} MiB",
                    flush=True,
                )
                torch.cuda.empty_cache()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
