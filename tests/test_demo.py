"""`crossattn demo` with a tiny model and a small time budget: it runs end to end and writes its
model, pictures and metrics.json."""

from __future__ import annotations

import json

import pytest

from crossattn.cli import main


@pytest.mark.slow
def test_tiny_demo_writes_metrics_and_pictures(tmp_path, capsys):
    out = tmp_path / "demo-out"
    code = main(["demo", "--out", str(out), "--tiny", "--budget-minutes", "0.6", "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "exact match" in printed and "BLEU" in printed and "AER" in printed
    assert "the cat sits here  ->  " in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_exact_match", "aer", "guided_alignment", "seconds"):
        assert key in metrics
    assert 0.0 <= metrics["test_exact_match"] <= 1.0 and 0.0 <= metrics["aer"] <= 1.0
    assert metrics["guided_alignment"] is False and metrics["tiny"] is True
    assert 0 < metrics["seconds"] < 120
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "data" / "train.txt").is_file()
    assert metrics["aer"] == metrics["test_aer"]
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
def test_tiny_demo_with_guided_alignment(tmp_path, capsys):
    out = tmp_path / "guided"
    code = main(["demo", "--out", str(out), "--tiny", "--guided-alignment",
                 "--budget-minutes", "0.5", "--threads", "1"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["guided_alignment"] is True
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["train"]["guided_alignment"] is True
