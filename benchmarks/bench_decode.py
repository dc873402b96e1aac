"""Time per decode step: prepared cross-attention K/V against projecting them at every step.

Both variants use an incremental decoder self-attention cache. The prepared path is the default
decoding path (`crossattn.models.incremental.IncrementalDecoder`): the encoder output is
projected to each decoder layer's keys and values once per input and shared by every step and
every beam (with a static `KVCache` and packed projections). The other, ``reuse_context=False``,
runs the model's general `decode` and projects the encoder output again at every step, as a
decoder without a cross-attention cache does (Hugging Face's path when ``use_cache=False``).

Variants alternate inside one process and the median of the repeats is reported. Writes
``benchmarks/results/decode.json`` and replaces the ``## Decode benchmark`` section of
``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/bench_decode.py            # default sizes
    .venv/bin/python benchmarks/bench_decode.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from crossattn.models import Seq2SeqConfig, Seq2SeqTransformer, beam_search
from results_md import write_section

HERE = Path(__file__).resolve().parent
SECTION = "## Decode benchmark"


def _time_steps(model, ids, mask, beam: int, steps: int, reuse: bool) -> float:
    """Seconds per decode step of one beam search forced to run ``steps`` steps."""
    t0 = time.perf_counter()
    beam_search(model, ids, mask, beam_size=beam, max_len=steps, reuse_context=reuse)
    return (time.perf_counter() - t0) / steps


def run(cases, repeats: int) -> list[dict]:
    rows = []
    for case in cases:
        torch.manual_seed(0)
        cfg = Seq2SeqConfig(
            1000, 1000, d_model=case["d_model"], heads=case["heads"], encoder_layers=2,
            decoder_layers=case["layers"], dim_ff=4 * case["d_model"], dropout=0.0, max_len=512,
        )  # fmt: skip
        model = Seq2SeqTransformer(cfg).eval()
        # EOS never wins, so every run decodes exactly `steps` steps: its (tied) output row is
        # -10 everywhere and the final norm adds 0.1 to every feature (logit -d_model).
        with torch.no_grad():
            model.target_embed.weight[cfg.eos_id] = -10.0
            model.decoder_norm.bias.fill_(0.1)
        ids = torch.randint(4, 1000, (case["batch"], case["source_len"]))
        mask = torch.ones_like(ids, dtype=torch.bool)
        times = {True: [], False: []}
        _time_steps(model, ids, mask, case["beam"], 4, True)  # warm-up
        for _ in range(repeats):
            for reuse in (True, False):  # alternate the variants
                times[reuse].append(
                    _time_steps(model, ids, mask, case["beam"], case["steps"], reuse)
                )
        prepared = statistics.median(times[True]) * 1e3
        recompute = statistics.median(times[False]) * 1e3
        rows.append({**case, "prepared_ms": prepared, "recompute_ms": recompute,
                     "speedup": recompute / prepared})  # fmt: skip
        print(
            f"{case}: prepared {prepared:.2f} ms/step, recompute {recompute:.2f} ms/step, "
            f"x{recompute / prepared:.2f}",
            flush=True,
        )
    return rows


def write(rows: list[dict], command: str) -> None:
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    meta = {
        "command": command,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "load_average": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    (results / "decode.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        SECTION,
        "",
        "Time per beam-search step of `Seq2SeqTransformer` (incremental self-attention cache in "
        "both): the default path, cross-attention K/V prepared once per input and shared by "
        "every step and beam, against the general path projecting the encoder output to K/V "
        "again at every step (a decoder without a cross-attention cache). Medians, variants "
        "alternated in one process, "
        f"torch {meta['torch']}, {meta['threads']} CPU thread(s); load average at the end "
        f"{meta['load_average']} on {os.cpu_count()} CPUs (a shared machine: compare the "
        "speed-ups, not the times).",
        "",
        f"Command: `{command}`",
        "",
        "| d_model | layers | batch x beam | source len | steps | prepared ms/step "
        "| recompute ms/step | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['d_model']} | {r['layers']} | {r['batch']} x {r['beam']} | {r['source_len']} "
            f"| {r['steps']} | {r['prepared_ms']:.2f} | {r['recompute_ms']:.2f} "
            f"| {r['speedup']:.2f}x |"
        )
    section = "\n".join(lines) + "\n"
    write_section(HERE / "RESULTS.md", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        cases = [dict(d_model=64, heads=4, layers=2, batch=2, beam=2, source_len=32, steps=8)]
    else:
        cases = [
            dict(d_model=256, heads=4, layers=3, batch=8, beam=4, source_len=25, steps=30),
            dict(d_model=256, heads=4, layers=3, batch=8, beam=4, source_len=100, steps=30),
            dict(d_model=512, heads=8, layers=6, batch=4, beam=4, source_len=200, steps=30),
        ]
    rows = run(cases, 3 if args.quick else args.repeats)
    command = "python benchmarks/bench_decode.py " + " ".join(sys.argv[1:])
    write(rows, command.strip())


if __name__ == "__main__":
    main()
