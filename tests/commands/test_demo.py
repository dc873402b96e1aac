"""`crossattn demo` with a tiny model: a smoke test well under 30 seconds that writes its model,
pictures and metrics.json, and runs again into its own output folder; the folders it refuses;
and the Makefile that sets it up, repairing a broken virtual environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from crossattn.cli import main


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    """One output folder for the demos of this module: each later one replaces the earlier."""
    return tmp_path_factory.mktemp("demo") / "demo-out"


@pytest.mark.slow
def test_tiny_demo_writes_metrics_and_pictures(demo_out, capsys):
    out = demo_out
    began = time.perf_counter()
    code = main(["demo", "--out", str(out), "--tiny", "--threads", "1"])
    assert time.perf_counter() - began < 30  # a smoke test (it ran the 4-minute budget)
    assert code == 0
    printed = capsys.readouterr().out
    assert "exact match" in printed and "BLEU" in printed and "AER" in printed
    assert "the cat sits here  ->  " in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_exact_match", "aer", "guided_alignment", "seconds"):
        assert key in metrics
    assert 0.0 <= metrics["test_exact_match"] <= 1.0 and 0.0 <= metrics["aer"] <= 1.0
    assert metrics["guided_alignment"] is False and metrics["tiny"] is True
    assert 0 < metrics["seconds"] < 30
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "data" / "train.txt").is_file()
    assert metrics["aer"] == metrics["test_aer"]
    # Both directions, the reverse model where `crossattn align` finds it; the AERs symmetrised,
    # the forward model's own beside them.
    assert (out / "model" / "reverse" / "model.safetensors").is_file()
    reverse_config = json.loads((out / "model" / "reverse" / "config.json").read_text())
    source_vocab = json.loads((out / "model" / "source_vocab.json").read_text())
    assert json.loads((out / "model" / "reverse" / "target_vocab.json").read_text()) == source_vocab
    assert reverse_config["train"]["guided_alignment"] is False
    assert metrics["train_steps"] > 0 and metrics["reverse_train_steps"] > 0
    for key in ("test_aer_forward", "test_aer_default_extraction_forward", "dev_aer_forward"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert "grow-diag-final" in printed
    # One heatmap per sentence translated to at least one word, and the viewer for the first.
    translated = [k for k, t in enumerate(metrics["translations"].values()) if t]
    pngs = sorted(p.name for p in out.glob("alignment_*.png"))
    assert pngs == [f"alignment_{k}.png" for k in translated]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    viewer = out / "viewer.html"
    assert viewer.is_file() == bool(translated)
    if translated:
        assert viewer.read_text().lstrip().lower().startswith("<!doctype html")


@pytest.mark.slow
def test_tiny_vqa_demo_writes_metrics_for_both_models(tmp_path, capsys):
    out = tmp_path / "demo-out-vqa"
    began = time.perf_counter()
    assert main(["demo", "--task", "vqa", "--out", str(out), "--tiny", "--threads", "1"]) == 0
    assert time.perf_counter() - began < 30
    printed = capsys.readouterr().out
    assert "unsupervised" in printed and "guided" in printed and "pointing game" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "vqa"
    for name in ("unsupervised", "guided"):
        run = metrics[name]
        for key in ("accuracy", "pointing_game", "mass_over_area", "baselines", "random_weights"):
            assert key in run, (name, key)
        assert 0 <= run["accuracy"] <= 1 and 0 <= run["pointing_game"] <= 1
        assert (out / f"model-{name}" / "model.safetensors").is_file()
    pngs = [name for name in metrics["pictures"] if name.endswith(".png")]
    assert pngs and set(metrics["pictures"]) == {*pngs, "viewer.html"}
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "viewer.html").read_text().lstrip().lower().startswith("<!doctype html")
    again = main(["demo", "--task", "vqa", "--out", str(out), "--guided-alignment", "--tiny"])
    assert again == 2 and "--guided-alignment" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_demo_with_guided_alignment_replaces_an_earlier_demo(demo_out, capsys):
    """Run after the test above, into the same folder: `make demo` run a second time."""
    out = demo_out
    (out / "alignment_9.png").write_bytes(b"stale")  # a picture the new run does not draw
    code = main(["demo", "--out", str(out), "--tiny", "--guided-alignment", "--threads", "1"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["guided_alignment"] is True
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["train"]["guided_alignment"] is True
    assert not (out / "alignment_9.png").exists()
    # one direction: the earlier demo's reverse model is gone, so `crossattn align` cannot pair
    # the guided model with it
    assert metrics["reverse_train_steps"] is None and "test_aer_forward" not in metrics
    assert not (out / "model" / "reverse").exists()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[-1]


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"a trained model")
    assert main(["demo", "--out", str(tmp_path), "--tiny"]) == 2
    line = _error_line(capsys)
    assert f"argument --out: {str(tmp_path)!r} is not empty and was not written by " in line
    assert "choose another --out, or pass --overwrite" in line
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_demo_into_an_unwritable_folder_is_one_clear_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    immutable = subprocess.run(["chattr", "+i", str(locked)], capture_output=True)  # noqa: S607
    outs = ["/proc/crossattn-demo"] + ([str(locked / "demo")] if immutable.returncode == 0 else [])
    try:
        for out in outs:
            assert main(["demo", "--out", out, "--tiny"]) == 2
            line = _error_line(capsys)
            assert f"argument --out: cannot create the directory {out!r}" in line, line
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)  # noqa: S607


def test_demo_interrupted_is_one_clear_line(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("crossattn.training.train", interrupted)
    assert main(["demo", "--out", str(tmp_path / "d"), "--tiny", "--threads", "1"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("crossattn demo: interrupted; ")


# ------------------------------------------------------------------------------ the Makefile
def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_repairs_a_virtual_environment_without_pip(tmp_path):
    """An interrupted `python -m venv` leaves a python without pip: make builds .venv again
    (here with a stand-in for python3 that makes a stand-in venv, logging what it runs)."""
    shutil.copy(Path(__file__).parents[2] / "Makefile", tmp_path)
    for name in ("pyproject.toml", "requirements-dev.txt"):
        (tmp_path / name).write_text("")
    log = tmp_path / "log"
    venv_python = f'#!/bin/sh\necho "$@" >> {log}'
    _script(tmp_path / "python3", f'[ "$1" = -m ] && [ "$2" = venv ] && mkdir -p "$3/bin" && '
            f"printf '%s\\n' '{venv_python}' > \"$3/bin/python\" && chmod +x \"$3/bin/python\"")  # fmt: skip
    broken = tmp_path / ".venv" / "bin"
    broken.mkdir(parents=True)
    no_pip = 'echo "No module named pip" >&2; exit 1'
    _script(broken / "python", no_pip)

    def make() -> list[str]:
        done = subprocess.run(["make", f"PYTHON={tmp_path / 'python3'}", ".venv/.installed"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        calls = log.read_text().splitlines()
        log.unlink()
        return calls

    assert "-m pip install -qq --disable-pip-version-check -r requirements-dev.txt" in make()
    assert (tmp_path / ".venv" / ".installed").is_file()
    # installed once, then broken (pip removed): the stamp does not keep make from repairing it
    _script(broken / "python", no_pip)
    os.utime(tmp_path / ".venv" / ".installed")
    assert "-m pip install -qq --disable-pip-version-check -r requirements-dev.txt" in make()
