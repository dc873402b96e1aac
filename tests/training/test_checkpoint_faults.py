"""Fault injection: training processes killed (SIGKILL, by PID) at random instants, each resumed
from what the kill left, end with weights bitwise equal to a run that was never killed.

A checkpoint is saved after every step (``save_seconds=0``), so most instants fall inside a
save. The processes are forked from a server that has imported torch once, so that a kill and
a resume cost a fraction of a second rather than an interpreter start; every run uses one
thread, so the uninterrupted run is a bitwise reference.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from crossattn.training import CHECKPOINT_FILE, STATE_FILE, TrainOptions, train
from tests.training.test_checkpoint import _pairs

STEPS = 12
RUNS = 4  # independent runs, each killed KILLS times, then resumed to the end
KILLS = 3


def _run(out: str, resume: bool) -> None:
    """One training process: resume the run in ``out``, or start it (again) from scratch."""
    torch.set_num_threads(1)
    opts = TrainOptions(data="", out=out, steps=STEPS, resume=resume, overwrite=not resume,
                        d_model=8, heads=2, dim_ff=8, encoder_layers=1, decoder_layers=2,
                        batch_tokens=60, warmup=1, dropout=0.1, dev_size=4, progress=False,
                        eval_seconds=float("inf"), save_seconds=0.0)  # fmt: skip
    train(opts, _pairs(40))


def _noop() -> None:
    pass


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _checkpoint_step(out: Path) -> int | None:
    from crossattn.training.checkpoint import read_checkpoint_state

    try:
        return int(read_checkpoint_state(out / CHECKPOINT_FILE)["step"])
    except FileNotFoundError:
        return None


def _wait_for_checkpoint(process, out: Path, step: int) -> None:
    """Until the checkpoint in ``out`` has reached ``step`` or ``process`` has ended; the
    checkpoint is read only when its file changes."""
    seen = None
    while process.is_alive():
        stamp = _mtime(out / CHECKPOINT_FILE)
        if stamp != seen:
            seen = stamp
            if (_checkpoint_step(out) or 0) >= step:
                return
        time.sleep(0.002)


@pytest.mark.slow
def test_runs_killed_at_random_instants_resume_to_bitwise_equal_weights(tmp_path):
    ctx = multiprocessing.get_context("forkserver")
    # everything a run imports, so that a forked run starts in a fraction of a second
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "safetensors.torch", "crossattn.align",
                                "crossattn.data.parallel", "crossattn.training", __name__])  # fmt: skip

    def start(out: Path, resume: bool):
        p = ctx.Process(target=_run, args=(str(out), resume), daemon=True)
        p.start()
        return p

    warm = ctx.Process(target=_noop)  # starts the fork server, which imports torch once
    warm.start()
    warm.join(timeout=120)
    began = time.perf_counter()
    reference = start(tmp_path / "reference", False)
    while not (tmp_path / "reference" / CHECKPOINT_FILE).exists() and reference.is_alive():
        time.sleep(0.01)
    first_save = time.perf_counter() - began  # set-up, and the first step with its save
    reference.join(timeout=120)
    assert reference.exitcode == 0
    expected = _weights(tmp_path / "reference")

    rng = random.Random(20240611)
    resumed_mid_run = []  # the checkpoint steps that resumed runs started from
    for r in range(RUNS):
        out = tmp_path / f"run{r}"
        for kill in range(KILLS + 1):
            step = _checkpoint_step(out)
            if step is not None:
                resumed_mid_run.append(step)
            saved = _mtime(out / CHECKPOINT_FILE)
            p = start(out, resume=step is not None)  # nothing saved yet: start over
            if kill < KILLS:
                if kill == 0 and r % 2 == 0:  # in the set-up or the first step and its save
                    time.sleep(rng.uniform(0.0, first_save))
                else:  # after this process's first save: inside a random step left
                    while p.is_alive() and _mtime(out / CHECKPOINT_FILE) == saved:
                        time.sleep(0.005)
                    # a checkpoint chosen at random, at least two steps before the end, then a
                    # moment within the next step as this process times it: counted in seconds
                    # from the reference run's step time, which load can make far longer than
                    # these runs' steps, the kills landed after the end of most runs
                    target = rng.randint(min((step or 0) + 2, STEPS - 2), STEPS - 2)
                    _wait_for_checkpoint(p, out, target - 1)
                    began_step = time.perf_counter()
                    _wait_for_checkpoint(p, out, target)
                    time.sleep(rng.uniform(0.0, time.perf_counter() - began_step))
                with contextlib.suppress(ProcessLookupError):  # it may have ended already
                    os.kill(p.pid, signal.SIGKILL)
            p.join(timeout=120)
            assert p.exitcode in ((0, -signal.SIGKILL) if kill < KILLS else (0,)), p.exitcode
            if p.exitcode == 0:
                break
        got = _weights(out)
        differ = [k for k in expected if not torch.equal(got[k], expected[k])]
        assert not differ, f"run {r}: {len(differ)} tensor(s) differ after resuming"
        assert (out / STATE_FILE).is_file()
        assert not list(out.glob(".*")), "temporary files of killed saves are left"
    # the kills did land inside runs: most resumes started from a checkpoint before the end
    assert len([s for s in resumed_mid_run if 0 < s < STEPS]) >= RUNS, resumed_mid_run


@pytest.fixture(autouse=True)
def _bounded_time():
    """The whole test stays well within a minute on a busy 2-core machine."""
    began = time.perf_counter()
    yield
    assert time.perf_counter() - began < 90
