"""Peak extra CPU memory of PerceiverEncoder on a long input (65,536 tokens, 256 latents).

Each configuration runs in a fresh subprocess: build the model and the inputs, warm up on a
short input, reset the kernel's peak-RSS counter (/proc/self/clear_refs), run one forward
without grad, and report VmHWM - VmRSS before the call: the peak memory beyond the model
and the inputs. Writes benchmarks/results/perceiver_memory.json and the `## Perceiver memory`
section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_perceiver.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from results_md import write_section

HERE = Path(__file__).resolve().parent
MIB = 1 << 20
SECTION = "## Perceiver memory"
COMMAND = ".venv/bin/python benchmarks/bench_perceiver.py"

BASE = dict(
    seq=65536,
    input_dim=64,
    num_latents=256,
    latent_dim=512,
    heads=8,
    dim_head=64,
    depth=6,
    cross_heads=1,
    cross_dim_head=64,
    num_cross_attends=1,
    share_weights=False,
    input_chunk_size=4096,
    input_backend="auto",
    mask=False,
)

CONFIGS = [
    ("default", {}),
    ("padding mask (25% padded)", {"mask": True}),
    ("input_dim 256, cross 2 x 64", {"input_dim": 256, "cross_heads": 2}),
    (
        "input_dim 256, cross 2 x 64, unchunked projection (contrast)",
        {"input_dim": 256, "cross_heads": 2, "input_chunk_size": 65536},
    ),
    ("4 cross-attends, shared weights", {"num_cross_attends": 4, "share_weights": True}),
    ("4 cross-attends, own weights", {"num_cross_attends": 4}),
    ("batch 2", {"batch": 2}),
    ("dispatch backend, padding mask (contrast)", {"input_backend": None, "mask": True}),
]


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def child(cfg: dict) -> dict:
    import torch

    from crossattn.layers import PerceiverEncoder

    torch.manual_seed(0)
    batch = cfg.get("batch", 1)
    enc = PerceiverEncoder(
        cfg["input_dim"],
        num_latents=cfg["num_latents"],
        latent_dim=cfg["latent_dim"],
        heads=cfg["heads"],
        dim_head=cfg["dim_head"],
        depth=cfg["depth"],
        cross_heads=cfg["cross_heads"],
        cross_dim_head=cfg["cross_dim_head"],
        num_cross_attends=cfg["num_cross_attends"],
        share_weights=cfg["share_weights"],
        input_chunk_size=cfg["input_chunk_size"],
        input_backend=cfg["input_backend"],
    ).eval()
    inputs = torch.randn(batch, cfg["seq"], cfg["input_dim"])
    mask = None
    if cfg["mask"]:
        mask = torch.ones(batch, cfg["seq"], dtype=torch.bool)
        mask[:, -cfg["seq"] // 4 :] = False
    with torch.no_grad():
        enc(inputs[:, :512], None if mask is None else mask[:, :512])  # warm-up
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status("VmRSS")
        start = time.perf_counter()
        out = enc(inputs, mask)
        seconds = time.perf_counter() - start
        peak = _status("VmHWM")
    assert out.shape == (batch, cfg["num_latents"], cfg["latent_dim"])
    kv = 2 * batch * cfg["seq"] * cfg["cross_heads"] * cfg["cross_dim_head"] * 4
    return {
        "rss_before_mib": before / MIB,
        "peak_extra_mib": (peak - before) / MIB,
        "kv_bytes_mib": kv / MIB,
        "inputs_mib": inputs.numel() * 4 / MIB,
        "params_mib": sum(p.numel() for p in enc.parameters()) * 4 / MIB,
        "forward_s": seconds,
    }


def run_all(limit_mib: float) -> dict:
    rows = []
    for name, change in CONFIGS:
        cfg = {**BASE, **change}
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(cfg)],
            capture_output=True,
            text=True,
            check=True,
        )
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        row = {"name": name, "config": cfg, **res}
        rows.append(row)
        print(
            f"{name:36s} peak extra {res['peak_extra_mib']:7.1f} MiB  (K/V {res['kv_bytes_mib']:.0f} "
            f"MiB, inputs {res['inputs_mib']:.0f} MiB)  {res['forward_s']:.2f} s",
            flush=True,
        )
    import torch

    return {
        "command": COMMAND,
        "limit_mib": limit_mib,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs".strip(),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        SECTION,
        "",
        f"`{result['command']}` (torch {result['torch']}, {result['machine']}; float32, no grad).",
        "Peak extra memory = VmHWM - VmRSS around one forward, in a fresh process, after the model "
        "and the inputs exist. Base: B=1, S=65,536 input tokens, input_dim 64, 256 latents of 512, "
        "depth 6 (8 x 64 heads), cross-attend 1 x 64, input_chunk_size 4096, backend auto "
        f"(chunked on the CPU). Limit: {result['limit_mib']:.0f} MiB.",
        "",
        "| configuration | peak extra (MiB) | input K/V (MiB) | inputs (MiB) | params (MiB) "
        "| forward (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['name']} | {r['peak_extra_mib']:.1f} | {r['kv_bytes_mib']:.0f} | "
            f"{r['inputs_mib']:.0f} | {r['params_mib']:.0f} | {r['forward_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--limit-mib", type=float, default=256.0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "perceiver_memory.json")
    parser.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    result = run_all(args.limit_mib)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_section(args.results_md, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
