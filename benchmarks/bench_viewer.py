"""Size and load time of the HTML viewer for large records, in headless Chromium.

Usage: python benchmarks/bench_viewer.py [--out benchmarks/results/bench_viewer.json]

For each record shape (layers, heads, L, S) the script writes the page with `to_html`, then loads
it in /usr/bin/chromium (playwright) and times goto -> viewer ready (data decoded, every token
element built), then the first hover of a target token and the first draw of the matrix view.
Times are medians of a few loads. Writes JSON and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from crossattn.viz import to_html  # noqa: E402

SHAPES = [(1, 1, 100, 100), (1, 1, 1000, 1000), (2, 4, 1000, 1000), (3, 4, 1000, 1000)]
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/bench_viewer.json")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rows = []
    tmp = Path(tempfile.mkdtemp())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for shape in SHAPES:
            g = torch.Generator().manual_seed(0)
            w = torch.softmax(torch.randn(*shape, generator=g) * 3, dim=-1)
            tokens = [f"w{i}" for i in range(shape[-1])]
            t0 = time.perf_counter()
            html = to_html(w, tokens, [f"t{i}" for i in range(shape[-2])])
            write_s = time.perf_counter() - t0
            path = tmp / "page.html"
            path.write_text(html, encoding="utf-8")
            loads, hovers, matrices = [], [], []
            for _ in range(args.repeats):
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                t0 = time.perf_counter()
                page.goto(path.as_uri())
                page.wait_for_selector(".ca-viewer[data-ready]", timeout=60_000)
                loads.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                page.hover(".ca-tok[data-side=target][data-i='0']")
                hovers.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                page.click(".ca-view-btn[data-view=matrix]")
                page.wait_for_selector("canvas.ca-matrix[data-cell]")
                matrices.append(time.perf_counter() - t0)
                page.close()
            rows.append(
                {
                    "shape": list(shape),
                    "file_mib": round(len(html.encode()) / 2**20, 2),
                    "to_html_s": round(write_s, 2),
                    "load_s": round(statistics.median(loads), 2),
                    "hover_s": round(statistics.median(hovers), 3),
                    "matrix_s": round(statistics.median(matrices), 3),
                }
            )
            print(rows[-1], flush=True)
        browser.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_viewer.py"
    out.write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    lines = [
        f"Command: `{command}` (headless Chromium, median of {args.repeats} loads)",
        "",
        "| layers x heads x L x S | file MiB | to_html s | load s | hover s | matrix view s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {' x '.join(map(str, r['shape']))} | {r['file_mib']} | {r['to_html_s']} | "
            f"{r['load_s']} | {r['hover_s']} | {r['matrix_s']} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
