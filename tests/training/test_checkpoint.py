"""The model directory as `train` keeps it: refusing to replace a model, resuming only from a
checkpoint, one consistent checkpoint file, resuming a finished run as a no-op, damaged or
unwritable directories and Ctrl-C as one clear line (the kill-at-random-instants test is in
test_checkpoint_faults.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crossattn.cli import main
from crossattn.training import TrainOptions, train

SOURCE = "le la chat chien noir blanc dort".split()
TARGET = "the cat dog black white sleeps".split()
TINY = ["--d-model", "8", "--heads", "2", "--dim-ff", "8", "--encoder-layers", "1",
        "--decoder-layers", "2", "--batch-tokens", "60", "--warmup", "1", "--dev-size", "0",
        "--eval-seconds", "1e6", "--no-progress", "--threads", "1"]  # fmt: skip


def _pairs(n: int) -> list:
    from crossattn.data.parallel import ParallelExample

    rng = random.Random(0)
    return [
        ParallelExample(
            tuple(rng.choices(SOURCE, k=3)),
            tuple(rng.choices(TARGET, k=3)),
            frozenset((i, i) for i in range(3)),
            frozenset(),
        )  # fmt: skip
        for _ in range(n)
    ]


def _tiny(out, **kw) -> TrainOptions:
    base = dict(data="", out=str(out), steps=4, d_model=8, heads=2, dim_ff=8, encoder_layers=1,
                decoder_layers=2, batch_tokens=60, warmup=1, dev_size=0, progress=False,
                dropout=0.1, eval_seconds=float("inf"), save_seconds=float("inf"))  # fmt: skip
    return TrainOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt_data") / "pairs.txt"
    path.write_text("".join(f"{' '.join(e.source)} ||| {' '.join(e.target)}\n" for e in _pairs(40)))
    return path


def _cli(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), *TINY, *extra])


def _error_line(capsys) -> str:
    """The one line a command printed on stderr (no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def _last_line(err: str) -> str:
    """The last line a command printed on stderr, after its progress log (no traceback)."""
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    return err.strip().splitlines()[-1]


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir()}


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensor(s) differ, e.g. {differ[0]}"


@pytest.fixture(autouse=True)
def one_thread():
    """Bitwise comparisons need one summation order: one thread for every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def straight(tmp_path) -> dict[str, torch.Tensor]:
    """The weights of an uninterrupted 4-step run (the reference of the resumed runs)."""
    train(_tiny(tmp_path / "straight"), _pairs(40))
    return _weights(tmp_path / "straight")


# ------------------------------------------------------------------ 1. an existing model
def test_train_refuses_to_replace_a_model_without_resume_or_overwrite(data, tmp_path, capsys):
    out = tmp_path / "model"
    assert _cli(data, out, "--steps", "2") == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert _cli(data, out, "--steps", "1") == 2
    line = _error_line(capsys)
    assert f"argument --out: {str(out)!r} already holds a model" in line
    assert "--resume" in line and "--overwrite" in line
    assert _snapshot(out) == before  # untouched
    with pytest.raises(
        FileExistsError,
        match=r"already holds a model .*TrainOptions.resume.*TrainOptions.overwrite",
    ):
        train(_tiny(out, steps=1), _pairs(40))
    assert _snapshot(out) == before
    assert _cli(data, out, "--steps", "1", "--overwrite") == 0
    state = json.loads((out / "train_state.json").read_text())
    assert state["step"] == 1 and state["finished"] is True


def test_resume_and_overwrite_exclude_each_other(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _cli(data, tmp_path / "m", "--steps", "1", "--resume", "--overwrite")
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="resume and TrainOptions.overwrite exclude each other"):
        _tiny(tmp_path / "m", resume=True, overwrite=True)


def test_an_empty_or_foreign_directory_is_no_model(data, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert _cli(data, tmp_path, "--steps", "1") == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------ 3. resume needs a checkpoint
def test_resume_where_there_is_no_checkpoint_is_an_error(data, tmp_path, capsys):
    typo = tmp_path / "modle"
    assert _cli(data, typo, "--steps", "2", "--resume") == 2
    line = _error_line(capsys)
    assert f"argument --resume: no checkpoint found in {str(typo)!r} (no such directory)" in line
    assert not typo.exists()
    with pytest.raises(FileNotFoundError, match=r"resume: no checkpoint found in .*modle"):
        train(_tiny(typo, resume=True), _pairs(40))
    assert not typo.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(data, empty, "--steps", "2", "--resume") == 2
    assert "no checkpoint found" in _error_line(capsys) and list(empty.iterdir()) == []
    (empty / "source_vocab.json").write_text("[]")  # a run stopped before its first save
    assert _cli(data, empty, "--steps", "2", "--resume") == 2
    line = _error_line(capsys)
    assert "(it holds source_vocab.json, but no checkpoint.safetensors)" in line
    assert line.endswith("or start a new run without --resume and with --overwrite")


# ------------------------------------------------------------------ 2. one consistent checkpoint
def test_the_checkpoint_is_one_file_that_carries_its_step(tmp_path, straight):
    from safetensors import safe_open

    from crossattn.models import Translator
    from crossattn.training.checkpoint import read_checkpoint_state

    out = tmp_path / "m"
    train(_tiny(out, stop_after=3), _pairs(40))
    names = sorted(p.name for p in out.iterdir())  # no temporary file left behind
    assert names == ["checkpoint.safetensors", "config.json", "extraction.json",
                     "model.safetensors", "source_vocab.json", "target_vocab.json",
                     "train_state.json"]  # fmt: skip
    assert read_checkpoint_state(out / "checkpoint.safetensors")["step"] == 3
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["step"] == "3"
    state = json.loads((out / "train_state.json").read_text())
    assert state["step"] == 3 and state["finished"] is True
    Translator.load(out)  # the layout every reader knows
    assert train(_tiny(out, resume=True), _pairs(40)).steps == 1
    _assert_bitwise_equal(_weights(out), straight)


def test_resume_of_a_finished_run_does_nothing(data, tmp_path, capsys):
    out = tmp_path / "m"
    assert _cli(data, out, "--steps", "3") == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert _cli(data, out, "--steps", "3", "--resume") == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[-1])["steps"] == 0
    assert "at step 3 of 3 already: nothing to do" in captured.err
    assert _snapshot(out) == before  # not a byte, not a time stamp changed


def test_resume_after_the_last_checkpoint_but_before_the_end_finishes_the_run(tmp_path):
    """Killed after the final checkpoint but before the model was written: resume writes it."""
    out = tmp_path / "m"
    train(_tiny(out), _pairs(40))
    expected = _weights(out)
    for name in ("model.safetensors", "extraction.json", "train_state.json"):
        (out / name).unlink()
    assert train(_tiny(out, resume=True), _pairs(40)).steps == 0
    _assert_bitwise_equal(_weights(out), expected)
    assert (out / "extraction.json").is_file()


# ------------------------------------------------------------------ 4. damaged files, no traceback
def test_resume_from_a_truncated_checkpoint_is_one_clear_line(data, tmp_path, capsys):
    from crossattn.training.checkpoint import CheckpointError

    out = tmp_path / "m"
    assert _cli(data, out, "--steps", "4", "--stop-after", "2") == 0
    ckpt = out / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    capsys.readouterr()
    assert _cli(data, out, "--steps", "4", "--resume") == 2
    line = _error_line(capsys)
    assert "argument --resume: cannot resume:" in line and "truncated or damaged" in line
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        train(_tiny(out, resume=True, dropout=0.0), _pairs(40))


def test_resume_rewrites_truncated_weights_from_the_checkpoint(data, tmp_path, capsys, straight):
    out = tmp_path / "m"
    train(_tiny(out, stop_after=2), _pairs(40))
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert train(_tiny(out, resume=True), _pairs(40)).steps == 2
    _assert_bitwise_equal(_weights(out), straight)
    # a finished run whose weights were damaged afterwards is finished again, not skipped
    weights.write_bytes(weights.read_bytes()[:100])
    train(_tiny(out, resume=True), _pairs(40))
    _assert_bitwise_equal(_weights(out), straight)


def _immutable_dir(tmp_path: Path):
    """A directory no one may write in (chattr +i, or mode 0555 when not root), or None."""
    path = tmp_path / "locked"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return path
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)  # noqa: S607
    return path if done.returncode == 0 else None


@pytest.fixture
def unwritable(tmp_path):
    locked = _immutable_dir(tmp_path)
    paths = ["/proc/crossattn-model", *([str(locked / "model"), str(locked)] if locked else [])]
    yield paths
    if locked is not None:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)  # noqa: S607
        locked.chmod(0o755)


def test_train_into_an_unwritable_directory_is_one_clear_line(data, unwritable, capsys):
    for out in unwritable:
        assert _cli(data, Path(out), "--steps", "1") == 2
        line = _error_line(capsys)
        verb = "write into" if os.path.isdir(out) else "create the directory"
        assert f"argument --out: cannot {verb} {out!r}" in line, line


# ------------------------------------------------------------------ 4. Ctrl-C
def _interrupt_at(monkeypatch, call: int) -> None:
    """Send SIGINT to this process while it computes the loss of the `call`-th step."""
    import crossattn.training.loop as train_module

    real, calls = train_module.batch_loss, []

    def batch_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "batch_loss", batch_loss)


def test_ctrl_c_saves_the_step_and_says_how_to_resume(data, tmp_path, capsys, monkeypatch):
    reference = tmp_path / "reference"
    assert _cli(data, reference, "--steps", "5", "--dropout", "0.1") == 0
    out = tmp_path / "m"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 3)
        capsys.readouterr()
        assert _cli(data, out, "--steps", "5", "--dropout", "0.1") == 130
    line = _last_line(capsys.readouterr().err)
    assert line == (
        f"crossattn train: interrupted at step 3: kept the checkpoint of step 3 in {str(out)!r}; "
        "to continue, run the same command with --resume"
    )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert _cli(data, out, "--steps", "5", "--dropout", "0.1", "--resume") == 0
    _assert_bitwise_equal(_weights(out), _weights(reference))


def test_ctrl_c_before_the_first_checkpoint_says_so(data, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("crossattn.training.trainer.Seq2SeqTransformer", interrupted)
    assert _cli(data, tmp_path / "m", "--steps", "5") == 130
    assert _last_line(capsys.readouterr().err) == (
        f"crossattn train: interrupted before the first checkpoint: nothing to resume in "
        f"{str(tmp_path / 'm')!r}; run the command again"
    )


@pytest.mark.slow
def test_ctrl_c_of_a_real_training_process(data, tmp_path):
    """SIGINT to `crossattn train` in its own process: status 130, one line, no traceback."""
    out = tmp_path / "m"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cmd = [sys.executable, "-m", "crossattn", "train", "--data", str(data), "--out", str(out),
           *TINY, "--steps", "1000000", "--save-seconds", "0.2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stderr.readline()  # the summary line: the loop starts right after it
        assert "training pairs" in first, first
        deadline = time.monotonic() + 120
        while not (out / "model.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # until the first save
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 130, err
    finally:
        proc.kill()
    line = _last_line(err)
    assert "interrupted at step" in line and "run the same command with --resume" in line
