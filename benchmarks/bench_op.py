"""Time and memory of `crossattn.cross_attention` per backend, against naive attention.

For the shapes (B, H, L, S, E) of the op benchmark, in float32 and bfloat16, it records for each
backend (``reference``, ``sdpa``, ``chunked``, ``lse``), for automatic dispatch
(``backend=None``) and for naive matmul-softmax-matmul:

- the median time of alternated repeats (A B C A B C ...: every variant sees the same machine
  load); ratios between two variants are medians over rounds of their times in one round, and
- the peak extra resident memory beyond the output tensor, measured in a fresh subprocess per
  measurement: inputs are built and the op is warmed up on a small shape, then the peak resident
  set (``VmHWM``) is reset through ``/proc/self/clear_refs`` and read after each of two calls at
  the measured shape. The table reports the second: the first may also grow the packing
  buffers that the matmul library keeps for the life of the process (about 2 MiB on shape A),
  and the JSON keeps it as ``first_call_peak_extra_mib``. glibc is told to return every freed
  block of 64 KiB or more to the system (``MALLOC_MMAP_THRESHOLD_``), so that memory freed by a
  warm-up or the first call cannot hide what the measured call needs.

On shapes A, B and E it also times ``return_weights="mean"`` (dispatched, and pinned to each
backend that gives weights) against the op without weights, and measures the extra memory of
the dispatched call with weights.

Writes ``benchmarks/results/bench_op.json`` and the ``## Op benchmark`` section of
``benchmarks/RESULTS.md`` (full runs; partial runs write ``bench_op_partial.json`` only).

    .venv/bin/python benchmarks/bench_op.py                 # everything (about 20 minutes)
    .venv/bin/python benchmarks/bench_op.py --quick --shapes A,D --dtypes bfloat16
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_md import cpu_name, write_section

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"
RESULTS_DIR = HERE / "results"
SECTION = "## Op benchmark"

# name: (B, H, L, S, E), what it stands for, whether it carries a key mask
SHAPES = {
    "A": ((2, 8, 4096, 77, 64), "text to image", False),
    "B": ((1, 8, 256, 65536, 64), "Perceiver latents", False),
    "C": ((8, 8, 512, 512, 64), "with a key_mask", True),
    "D": ((8, 8, 1, 1024, 64), "decode step", False),
    "E": ((1, 8, 8192, 8192, 64), "long context", False),
}
BACKENDS = ("reference", "sdpa", "chunked", "lse")
VARIANTS = ("naive", *BACKENDS, "dispatch")
# Shapes with a `return_weights="mean"` row, and the variants timed there (dispatch first).
WEIGHT_SHAPES = ("A", "B", "E")
WEIGHT_VARIANTS = ("dispatch", "chunked", "lse")
# The reference materialises about two float32 (B, H, L, S) maps; skip it beyond this.
REFERENCE_LIMIT_BYTES = 6 << 30
MIB = 1 << 20


def make_inputs(shape_name: str, dtype_name: str, small: bool = False):
    """query, key, value and key_mask (or None) of a shape, seeded."""
    import torch

    (b, h, length, s, e), _, with_mask = SHAPES[shape_name]
    if small:  # the warm-up shape of a memory measurement
        length, s = min(length, 64), min(s, 128)
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(b, h, length, e, generator=gen).to(dtype)
    key = torch.randn(b, h, s, e, generator=gen).to(dtype)
    value = torch.randn(b, h, s, e, generator=gen).to(dtype)
    key_mask = None
    if with_mask:
        lengths = torch.randint(s // 2, s + 1, (b,), generator=gen)
        key_mask = torch.arange(s)[None, :] < lengths[:, None]  # (B, S)
    return query, key, value, key_mask


def make_call(variant: str, query, key, value, key_mask, weights=False):
    """A zero-argument callable running one variant; it returns the output (and weights)."""
    import torch

    import crossattn

    if variant == "naive":
        scale = 1.0 / math.sqrt(query.shape[-1])

        def naive():
            scores = torch.matmul(query, key.transpose(-1, -2)) * scale  # (B, H, L, S)
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
            return torch.matmul(torch.softmax(scores, dim=-1), value)  # (B, H, L, E)

        return naive
    backend = None if variant == "dispatch" else variant

    def op():
        return crossattn.cross_attention(
            query, key, value, key_mask=key_mask, backend=backend, return_weights=weights
        )

    return op


def dispatched_backend(query, key, value, key_mask, weights=False) -> str:
    """The backend that `backend=None` picks for this call."""
    from crossattn.backends import AttentionInputs, select_backend

    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, S)
    inputs = AttentionInputs(query, key, value, mask, 1.0, 0.0, weights)
    return select_backend(inputs).name


def reference_bytes(shape_name: str) -> int:
    (b, h, length, s, _), _, _ = SHAPES[shape_name]
    return 2 * b * h * length * s * 4


def output_bytes(result) -> int:
    tensors = result if isinstance(result, tuple) else (result,)
    return sum(t.numel() * t.element_size() for t in tensors)


# ----------------------------------------------------------------------------------------------
# Memory: one fresh subprocess per measurement


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(spec: dict) -> dict:
    """Run in the subprocess: the peak resident memory of one call beyond its inputs and output.

    Two calls at the measured shape are measured one after the other. The first may also grow
    buffers that the matmul library keeps for the life of the process (its packing buffers,
    about 2 MiB here), which every later call reuses; the second call's peak is the call's own
    working memory, and the one the table reports. Memory that the first call frees goes back to
    the system (see `measure_memory`), so it cannot hide what the second call needs.
    """
    import torch

    torch.set_num_threads(spec["threads"])
    weights = spec.get("weights", False)
    small = make_inputs(spec["shape"], spec["dtype"], small=True)
    make_call(spec["variant"], *small, weights=weights)()  # load kernels, start thread pools
    del small
    query, key, value, key_mask = make_inputs(spec["shape"], spec["dtype"])
    call = make_call(spec["variant"], query, key, value, key_mask, weights=weights)
    peaks = []
    for _ in range(2):
        gc.collect()
        base = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set (VmHWM) to the current one
        result = call()
        peaks.append((_status_kib("VmHWM") - base) * 1024)
        out_bytes = output_bytes(result[0] if isinstance(result, tuple) else result)
        all_bytes = output_bytes(result)
        del result
    return {
        "peak_extra_bytes": peaks[1] - out_bytes,
        "peak_extra_beyond_all_outputs_bytes": peaks[1] - all_bytes,
        "first_call_peak_extra_bytes": peaks[0] - out_bytes,
        "output_bytes": out_bytes,
    }


def measure_memory(spec: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Time: alternated repeats in this process


def time_alternated(calls: dict, budget_s: float, min_reps: int, max_reps: int, progress):
    """Median seconds per call of each variant, repeats alternated A B C A B C ..."""
    first = {}
    for name, call in calls.items():  # warm-up call, also a first estimate
        t0 = time.perf_counter()
        call()
        first[name] = time.perf_counter() - t0
    per_round = sum(first.values())
    reps = int(max(min_reps, min(max_reps, budget_s // max(per_round, 1e-9))))
    times = {name: [] for name in calls}
    gc.collect()
    gc.disable()
    try:
        for _ in range(reps):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
            progress()
    finally:
        gc.enable()
    return {name: statistics.median(ts) for name, ts in times.items()}, times


def paired_ratio(times: dict, num: str, den: str) -> float:
    """Median over rounds of num's time over den's in the same round.

    Both ran back to back in every round, so a change of machine load between rounds cancels
    out; a ratio of the two medians would take the noise of both.
    """
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


# ----------------------------------------------------------------------------------------------


def run(args) -> dict:
    import torch
    from tqdm import tqdm

    import crossattn
    from crossattn import _cpu

    torch.set_num_threads(args.threads)
    shapes = [s.strip().upper() for s in args.shapes.split(",")]
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    for s in shapes:
        if s not in SHAPES:
            raise SystemExit(f"--shapes: unknown shape {s!r}; choose from {','.join(SHAPES)}")
    for d in dtypes:
        if d not in ("float32", "bfloat16"):
            raise SystemExit(f"--dtypes: unknown dtype {d!r}; choose from float32,bfloat16")
    reps = (3, 5, 1.5) if args.quick else (9, 40, 5.0)  # min, max repeats, seconds per cell
    weight_shapes = [s for s in shapes if s in WEIGHT_SHAPES]
    total_steps = len(dtypes) * (len(shapes) * (1 + len(VARIANTS)) + 2 * len(weight_shapes))
    bar = tqdm(total=total_steps, desc="bench_op", file=sys.stderr, dynamic_ncols=True)
    rows = [
        time_cell(shape_name, dtype_name, args, reps, bar)
        for shape_name in shapes
        for dtype_name in dtypes
    ]
    weights_rows = [
        weights_cell(shape_name, dtype_name, args, reps, bar)
        for shape_name in weight_shapes
        for dtype_name in dtypes
    ]
    bar.close()
    return {
        "machine": {
            "processor": cpu_name(),
            "amx": _cpu.AMX,
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "crossattn": getattr(crossattn, "__version__", "?"),
            "load_average": os.getloadavg(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        },
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "rows": rows,
        "weights": weights_rows,
    }


def time_cell(shape_name: str, dtype_name: str, args, reps, bar) -> dict:
    """One row of the main table: every variant timed side by side, then its memory."""
    dims, what, with_mask = SHAPES[shape_name]
    bar.set_postfix_str(f"{shape_name} {dtype_name} time")
    query, key, value, key_mask = make_inputs(shape_name, dtype_name)
    skipped = {}
    if reference_bytes(shape_name) > REFERENCE_LIMIT_BYTES:
        skipped["reference"] = "needs more than 6 GiB"
    if args.quick and reference_bytes(shape_name) > (256 * MIB):
        skipped["reference"] = skipped["naive"] = "skipped by --quick at this size"
    calls = {v: make_call(v, query, key, value, key_mask) for v in VARIANTS if v not in skipped}
    medians, all_times = time_alternated(calls, reps[2], reps[0], reps[1], lambda: None)
    picked = dispatched_backend(query, key, value, key_mask)
    del calls, query, key, value, key_mask
    gc.collect()
    bar.update(1)
    memory = {}
    for variant in VARIANTS:
        if variant not in skipped:
            bar.set_postfix_str(f"{shape_name} {dtype_name} memory {variant}")
            spec = {"shape": shape_name, "dtype": dtype_name, "variant": variant}
            memory[variant] = measure_memory({**spec, "threads": args.threads})
        bar.update(1)
    fastest = min((medians[b], b) for b in BACKENDS if b in medians)
    return {
        "shape": shape_name,
        "dims": dims,
        "what": what,
        "key_mask": with_mask,
        "dtype": dtype_name,
        "median_ms": {k: v * 1e3 for k, v in medians.items()},
        "times_ms": {k: [t * 1e3 for t in v] for k, v in all_times.items()},
        "peak_extra_mib": {
            k: (m["peak_extra_bytes"] / MIB if "peak_extra_bytes" in m else None)
            for k, m in memory.items()
        },
        "first_call_peak_extra_mib": {
            k: m["first_call_peak_extra_bytes"] / MIB
            for k, m in memory.items()
            if "first_call_peak_extra_bytes" in m
        },
        "memory_errors": {k: m["error"] for k, m in memory.items() if "error" in m},
        "skipped": skipped,
        "dispatch_picks": picked,
        "fastest_backend": fastest[1],
        "dispatch_over_fastest": paired_ratio(all_times, "dispatch", fastest[1]),
        "dispatch_over_fastest_of_medians": medians["dispatch"] / fastest[0],
        "dispatch_over": {
            b: paired_ratio(all_times, "dispatch", b) for b in BACKENDS if b in medians
        },
    }


def weights_cell(shape_name: str, dtype_name: str, args, reps, bar) -> dict:
    """``return_weights="mean"``: dispatched and per weight-giving backend, against the op
    without weights (dispatched), side by side; then the dispatched call's extra memory."""
    from crossattn.backends.chunked import TILE_ELEMENTS

    bar.set_postfix_str(f"{shape_name} {dtype_name} weights")
    query, key, value, key_mask = make_inputs(shape_name, dtype_name)
    calls = {"no weights": make_call("dispatch", query, key, value, key_mask)}
    for variant in WEIGHT_VARIANTS:
        calls[f"{variant} mean"] = make_call(variant, query, key, value, key_mask, weights="mean")
    medians, all_times = time_alternated(calls, reps[2], reps[0], reps[1], lambda: None)
    picked = dispatched_backend(query, key, value, key_mask, weights="mean")
    del calls, query, key, value, key_mask
    gc.collect()
    bar.update(1)
    spec = {"shape": shape_name, "dtype": dtype_name, "variant": "dispatch", "weights": "mean"}
    mem = measure_memory({**spec, "threads": args.threads})
    bar.update(1)
    (b, h, length, s, _), _, _ = SHAPES[shape_name]
    itemsize = 4 if dtype_name == "float32" else 2
    map_bytes = b * length * s * itemsize  # the (B, L, S) map itself
    tile_bytes = min(TILE_ELEMENTS, b * h * length * s) * 4  # one float32 score tile
    fastest = min((medians[f"{v} mean"], v) for v in WEIGHT_VARIANTS if v != "dispatch")
    return {
        "shape": shape_name,
        "dtype": dtype_name,
        "median_ms": {k: v * 1e3 for k, v in medians.items()},
        "times_ms": {k: [t * 1e3 for t in v] for k, v in all_times.items()},
        "ratio": paired_ratio(all_times, "dispatch mean", "no weights"),
        "dispatch_picks": picked,
        "fastest_backend": fastest[1],
        "dispatch_over_fastest": paired_ratio(all_times, "dispatch mean", f"{fastest[1]} mean"),
        "peak_extra_mib": mem.get("peak_extra_bytes", math.nan) / MIB,
        "first_call_peak_extra_mib": mem.get("first_call_peak_extra_bytes", math.nan) / MIB,
        "memory_error": mem.get("error"),
        "limit_mib": (map_bytes + tile_bytes) / MIB,
    }


def _fmt_ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _fmt_mib(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "?"
    return f"{max(x, 0.0):.0f}" if abs(x) >= 10 else f"{max(x, 0.0):.1f}"


def markdown(result: dict, command: str) -> str:
    rows, lines = result["rows"], []
    m = result["machine"]
    lines += [
        SECTION,
        "",
        f"Made by `{command}` on {result['date_utc']} UTC: {m['processor']}"
        f"{' with AMX' if m.get('amx') else ''}, {m['cores']} cores, "
        f"{m['threads']} torch threads, torch {m['torch']}, OMP_WAIT_POLICY "
        f"{m.get('omp_wait_policy', '(unset)')}; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in m['load_average'])} (the machine is shared).",
        "",
        "Each cell: median time in ms of alternated repeats, and in brackets the peak extra "
        "resident memory in MiB beyond the output tensor (fresh subprocess per measurement, "
        "second call at the shape: the first may also grow the matmul library's packing "
        "buffers, which it keeps for later calls; see `memory_child`). "
        "`dispatch` is `backend=None`; the backend it picked and its time over the fastest "
        "backend's are in the last two columns (the median over rounds of the two times of one "
        "round, see `paired_ratio`). Ratios within one row are measured side by side; absolute "
        "times vary with the load.",
        "",
        "| shape (B, H, L, S, E) | dtype | " + " | ".join(VARIANTS) + " | picks "
        "| dispatch / fastest |",
        "| --- | --- | " + " | ".join("---" for _ in VARIANTS) + " | --- | --- |",
    ]
    for r in rows:
        cells = []
        for v in VARIANTS:
            if v in r["skipped"]:
                cells.append(f"skipped ({r['skipped'][v]})")
                continue
            cells.append(f"{_fmt_ms(r['median_ms'][v])} ({_fmt_mib(r['peak_extra_mib'].get(v))})")
        mask = ", key_mask" if r["key_mask"] else ""
        lines.append(
            f"| {r['shape']} {tuple(r['dims'])}{mask} | {r['dtype']} | "
            + " | ".join(cells)
            + f" | {r['dispatch_picks']} | {r['dispatch_over_fastest']:.2f}x |"
        )
    if result["weights"]:
        lines += [
            "",
            '`return_weights="mean"` against the op without weights (dispatched), side by side; '
            "ratio = dispatched mean weights over no weights; memory of the dispatched call with "
            "weights, beyond its output; limit = the (B, L, S) map plus one float32 score tile "
            "(32 MiB at most):",
            "",
            "| shape | dtype | no weights (ms) | "
            + " | ".join(f"{v} mean (ms)" for v in WEIGHT_VARIANTS)
            + " | ratio | picks | dispatch / fastest | peak extra MiB | first call MiB "
            "| limit MiB |",
            "| --- | --- | --- | " + " | ".join("---" for _ in WEIGHT_VARIANTS) + " | --- | --- "
            "| --- | --- | --- | --- |",
        ]
        for w in result["weights"]:
            med = w["median_ms"]
            lines.append(
                f"| {w['shape']} | {w['dtype']} | {_fmt_ms(med['no weights'])} | "
                + " | ".join(_fmt_ms(med[f"{v} mean"]) for v in WEIGHT_VARIANTS)
                + f" | {w['ratio']:.2f}x | {w['dispatch_picks']} | "
                f"{w['dispatch_over_fastest']:.2f}x | {_fmt_mib(w['peak_extra_mib'])} | "
                f"{_fmt_mib(w.get('first_call_peak_extra_mib'))} | {w['limit_mib']:.1f} |"
            )
    lines += ["", "Targets of the op benchmark, in this run:", ""]
    lines += [f"- {t}" for t in targets(result)]
    lines.append("")
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def targets(result: dict) -> list[str]:
    out = []
    by = {(r["shape"], r["dtype"]): r for r in result["rows"]}
    worst = max(result["rows"], key=lambda r: r["dispatch_over_fastest"], default=None)
    if worst is not None:
        ok = all(r["dispatch_over_fastest"] <= 1.05 for r in result["rows"])
        out.append(
            f"{_met(ok)}: `backend=None` within 1.05x of the fastest backend everywhere "
            f"(worst {worst['dispatch_over_fastest']:.2f}x at {worst['shape']} "
            f"{worst['dtype']})"
        )
    for shape in ("B", "E"):
        for dtype in ("float32", "bfloat16"):
            r = by.get((shape, dtype))
            if r is None:
                continue
            mib = r["peak_extra_mib"].get("chunked")
            naive = _fmt_mib(r["peak_extra_mib"].get("naive"))
            out.append(
                f"{_met(mib is not None and mib <= 64)}: chunked peak extra memory on {shape} "
                f"{dtype} {_fmt_mib(mib)} MiB <= 64 MiB (naive: {naive} MiB)"
            )
    for shape in ("A", "B", "E"):
        r = by.get((shape, "bfloat16"))
        if r is not None:
            speedup = paired_ratio(r["times_ms"], "sdpa", "dispatch")
            out.append(
                f"{_met(speedup >= 1.5)}: on {shape} in bfloat16 the dispatched op is "
                f"{speedup:.2f}x faster than sdpa (target >= 1.5x)"
            )
    for w in result["weights"]:
        limit = 1.3 if w["dtype"] == "float32" else math.inf
        if w["shape"] == "A":
            limit = min(limit, 1.5)
        ok = w["ratio"] <= limit and w["peak_extra_mib"] <= w["limit_mib"]
        bound = f"<= {limit}x" if math.isfinite(limit) else "reported"
        out.append(
            f'{_met(ok)}: on {w["shape"]} {w["dtype"]}, `return_weights="mean"` costs '
            f"{w['ratio']:.2f}x the op without weights ({bound}) and "
            f"{w['peak_extra_mib']:.1f} MiB extra (<= {w['limit_mib']:.1f} MiB); dispatch "
            f"{w['dispatch_over_fastest']:.2f}x the fastest backend with weights"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats; no naive/reference on shapes over 256 MiB of scores",
    )
    parser.add_argument("--shapes", default=",".join(SHAPES), help="e.g. A,D (default: all)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="float32 and/or bfloat16")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0
    if args.threads is None:
        args.threads = os.cpu_count() or 1
    command = ".venv/bin/python benchmarks/bench_op.py" + (
        " " + " ".join(argv if argv is not None else sys.argv[1:])
        if (argv if argv is not None else sys.argv[1:])
        else ""
    )
    result = run(args)
    result["command"] = command
    full = (
        not args.quick
        and set(args.shapes.upper().split(",")) == set(SHAPES)
        and set(args.dtypes.split(",")) == {"float32", "bfloat16"}
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = "bench_op.json" if full else "bench_op_partial.json"
    (RESULTS_DIR / name).write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result, command)
    if full:
        write_section(RESULTS_MD, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
