"""`crossattn train`, `align` and `translate` end to end on a tiny toy corpus, the losses, resume,
atomic writes, and 2-process DDP against a single process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from crossattn.cli import main
from crossattn.models.checkpoint import atomic_write as _atomic
from crossattn.training import Batch, TrainOptions, batch_loss, batch_norm, collate, train

TINY = ["--d-model", "16", "--heads", "2", "--dim-ff", "24", "--encoder-layers", "1",
        "--decoder-layers", "2", "--batch-tokens", "300", "--warmup", "2", "--dev-size", "20",
        "--no-progress", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    from crossattn.data.toy_translation import generate_corpus, write_corpus

    c = generate_corpus(5, n_train=200, n_dev=0, n_test=12, max_len=10)
    return write_corpus(c, tmp_path_factory.mktemp("toy"))


def _train(corpus, out, *extra) -> dict:
    args = ["train", "--data", str(corpus["train"]), "--alignments", str(corpus["train_align"])]
    return main([*args, "--out", str(out), *TINY, *extra])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def model_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model")
    assert _train(corpus, out, "--steps", "6", "--guided-alignment", "--entropy-weight", "0.01",
                  "--coverage-weight", "0.01") == 0  # fmt: skip
    return out


@pytest.mark.slow
def test_train_writes_a_complete_model_dir(model_dir, corpus, capsys):
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == sorted(
        [
            "config.json",
            "model.safetensors",
            "source_vocab.json",
            "target_vocab.json",
            "extraction.json",
            "train_state.json",
            "checkpoint.safetensors",
        ]
    )  # fmt: skip  (no temporary file is left behind)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model"]["d_model"] == 16 and config["train"]["guided_alignment"] is True
    state = json.loads((model_dir / "train_state.json").read_text())
    assert state["step"] == 6 and set(state["dev"]) == {"loss", "ppl", "accuracy"}
    assert state["finished"] is True
    from crossattn.align import ExtractionConfig

    extraction = ExtractionConfig.from_dict(json.loads((model_dir / "extraction.json").read_text()))
    assert extraction.dev_aer is not None  # chosen on the held-out split, which has gold


@pytest.mark.slow
def test_train_prints_its_result_on_stdout(corpus, tmp_path, capsys):
    assert _train(corpus, tmp_path / "m", "--steps", "2") == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["out"] == str(tmp_path / "m")
    assert "training pairs" in captured.err  # logs go to stderr


@pytest.mark.slow
def test_resume_continues_exactly(corpus, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(corpus, straight, "--steps", "6", "--dropout", "0.1") == 0
    assert _train(corpus, resumed, "--steps", "6", "--stop-after", "3", "--dropout", "0.1") == 0
    half = _weights(resumed)
    assert _train(corpus, resumed, "--steps", "6", "--dropout", "0.1", "--resume") == 0
    a, b = _weights(straight), _weights(resumed)
    assert any(not torch.equal(half[k], b[k]) for k in b)  # it did train further
    for k in a:  # one thread (TINY): bitwise the same
        assert torch.equal(b[k], a[k]), k
    assert json.loads((resumed / "train_state.json").read_text())["step"] == 6


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")

    def broken(path):
        path.write_text("half a fi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _atomic(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


@pytest.mark.slow
@pytest.mark.slow
def test_align_into_a_closed_pipe_stops_quietly(model_dir, corpus, tmp_path):
    """`crossattn align ... | head -1`: the reader goes away; no traceback, status 141."""
    many = tmp_path / "many.txt"
    many.write_text(corpus["test"].read_text() * 200)  # far more than one pipe buffer
    cmd = [sys.executable, "-m", "crossattn", "align", "--model", str(model_dir), "--data",
           str(many), "--threads", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader leaves
    _, err = proc.communicate(timeout=300)
    assert re.fullmatch(rb"(\d+-\d+ ?)*\n", first)
    assert proc.returncode == 141, err.decode()
    assert b"Traceback" not in err and b"BrokenPipeError" not in err


@pytest.mark.slow
def test_align_skipping_bad_lines_keeps_one_output_line_per_input_line(model_dir, corpus, tmp_path, capsys):  # fmt: skip
    good = corpus["test"].read_text().splitlines()[:2]
    data = tmp_path / "pairs.txt"
    data.write_text(f"{good[0]}\nno separator here\n{good[1]}\n")
    assert main(["align", "--model", str(model_dir), "--data", str(data), "--skip-bad-lines",
                 "--threads", "1"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    lines = captured.out.split("\n")
    assert len(lines) == 4 and lines[3] == ""  # three lines, each ended by a newline
    assert lines[1] == "" and re.fullmatch(r"(\d+-\d+ ?)+", lines[0]) and lines[2]
    assert f"skipped 1 pair(s); their output lines are empty: {data}:2: missing" in captured.err


@pytest.mark.slow
def test_resume_with_another_model_shape_is_a_clean_cli_error(model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "resumed"
    shutil.copytree(model_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _train(corpus, out, "--steps", "8", "--resume", "--d-model", "32") == 2
    err = capsys.readouterr().err
    assert "crossattn train: error: argument --resume: these options differ from the model" in err
    assert "d_model 16 -> 32" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing was written


def test_align_prints_one_pharaoh_line_per_pair(model_dir, corpus, capsys):
    assert main(["align", "--model", str(model_dir), "--data", str(corpus["test"]),
                 "--threads", "1"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    pairs = [line.split(" ||| ") for line in corpus["test"].read_text().splitlines()]
    assert len(lines) == len(pairs) == 12
    for line, (src, tgt) in zip(lines, pairs):
        for link in line.split():
            m = re.fullmatch(r"(\d+)-(\d+)", link)
            assert m, line
            assert int(m[1]) < len(src.split()) and int(m[2]) < len(tgt.split())


@pytest.mark.slow
def test_translate_prints_translation_and_alignment(model_dir, capsys):
    assert main(["translate", "--model", str(model_dir), "the red car", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    n_words = len(lines[0].split())
    for link in lines[1].split():
        i, j = map(int, link.split("-"))
        assert i < 3 and j < n_words
    assert main(["translate", "--model", str(model_dir), "--json", "--beam", "1", "the cat"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == ["the", "cat"] and isinstance(data["alignment"], str)  # Pharaoh


@pytest.mark.slow
def test_translator_api(model_dir):
    from crossattn.models import Translator

    tr = Translator.load(model_dir)
    r = tr.translate("the red car", beam=2)
    layers, heads = 2, 2
    assert r.weights.shape == (layers, heads, len(r.target_tokens), 3)
    assert r.decoder_attention.shape[2] == len(r.target_tokens) + 1
    if r.target_tokens:  # force-decoding the model's own translation gives the same maps
        forced = tr.align("the red car", r.target_tokens)
        assert forced.target_tokens == r.target_tokens
        torch.testing.assert_close(forced.weights, r.weights, atol=1e-5, rtol=0)
        assert forced.alignment == r.alignment
    forced = tr.align("the red car", "la voiture rouge")
    assert forced.weights.shape == (layers, heads, 3, 3)
    assert all(i < 3 and j < 3 for i, j in forced.alignment)
    with pytest.raises(ValueError, match="target is empty: nothing to align"):
        tr.align("the red car", "")
    with pytest.raises(ValueError, match="cannot translate an empty sentence"):
        tr.translate("   ")


def _encoded_batch() -> Batch:
    from crossattn.training import Encoded

    examples = [
        Encoded((4, 5, 6), (4, 5), frozenset({(0, 0), (2, 0), (1, 1)})),
        Encoded((7,), (6, 7, 8), frozenset({(0, 2)})),
    ]
    return collate(examples, with_align=True)


def test_collate_and_guided_alignment_target():
    batch = _encoded_batch()
    assert batch.source.tolist() == [[4, 5, 6], [7, 0, 0]]
    assert batch.target_in.tolist() == [[1, 4, 5, 0], [1, 6, 7, 8]]
    assert batch.target_out.tolist() == [[4, 5, 2, 0], [6, 7, 8, 2]]
    # row j (which predicts target word j) spreads evenly over the source words linked to j
    assert batch.align[0, 0].tolist() == [0.5, 0.0, 0.5]
    assert batch.align[0, 1].tolist() == [0.0, 1.0, 0.0]
    assert batch.align[1, 2].tolist() == [1.0, 0.0, 0.0]
    assert batch.align[1, :2].sum() == 0 and batch.align[0, 2:].sum() == 0
    assert batch_norm(batch) == {"tokens": 7.0, "align_rows": 3.0, "source_tokens": 4.0}


@pytest.mark.parametrize("term", ["guided", "entropy", "coverage"])
def test_attention_losses_equal_their_definitions(term):
    from crossattn.models import Seq2SeqConfig, Seq2SeqTransformer

    torch.manual_seed(0)
    model = Seq2SeqTransformer(Seq2SeqConfig(10, 10, d_model=8, heads=2, encoder_layers=1,
                                             decoder_layers=2, dim_ff=8, dropout=0.0)).double()  # fmt: skip
    batch = _encoded_batch()
    norm = batch_norm(batch)
    base = TrainOptions(data="", out="", label_smoothing=0.0)
    opts = TrainOptions(data="", out="", label_smoothing=0.0, attention_layer=-1, attention_head=1,
                        guided_alignment=term == "guided", guided_weight=0.5,
                        entropy_weight=0.3 * (term == "entropy"),
                        coverage_weight=0.2 * (term == "coverage"))  # fmt: skip
    extra = batch_loss(model, batch, opts, norm).total - batch_loss(model, batch, base, norm).total
    w = model(batch.source, batch.source_mask, batch.target_in, attention_layers=[1])
    w = w.cross_weights[1].detach()  # (B, H, T, S)
    valid = (batch.target_out != 0).double()  # (B, T)
    if term == "guided":
        expected = (
            0.5 * -(batch.align * torch.log(w[:, 1].clamp_min(1e-9))).sum() / norm["align_rows"]
        )
    elif term == "entropy":
        ent = -(w * torch.log(w.clamp_min(1e-9))).sum(-1).mean(1)  # (B, T), mean over heads
        expected = 0.3 * (ent * valid).sum() / norm["tokens"]
    else:
        cov = (w * valid[:, None, :, None]).sum(2)  # (B, H, S)
        miss = ((cov - 1) ** 2 * batch.source_mask[:, None]).sum() / w.shape[1]
        expected = 0.2 * miss / norm["source_tokens"]
    assert extra.item() == pytest.approx(expected.item(), rel=1e-9)
    if term == "guided":  # the guided loss trains the attention through the weights
        model.zero_grad()
        batch_loss(model, batch, opts, norm).total.backward()
        assert model.decoder[1].cross_attn_target_to_source.to_q.weight.grad.abs().sum() > 0


def test_train_errors(corpus, tmp_path):
    with pytest.raises(ValueError, match="give steps or minutes"):
        train(TrainOptions(data=str(corpus["train"]), out=str(tmp_path)))
    with pytest.raises(
        ValueError,
        match="TrainOptions.guided_alignment: needs gold links: set TrainOptions.alignments",
    ):
        train(TrainOptions(data=str(corpus["train"]), out=str(tmp_path), steps=1,
                           guided_alignment=True))  # fmt: skip
    with pytest.raises(ValueError, match=r"TrainOptions.steps must be a positive int, got 0"):
        train(TrainOptions(data=str(corpus["train"]), out=str(tmp_path), steps=0))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------- option and data checks
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"clip": 0}, ValueError, r"TrainOptions.clip must be a positive finite real number, got 0$"),
        ({"clip": -1.0}, ValueError, r"TrainOptions.clip must be a positive finite real number"),
        ({"clip": None}, TypeError, r"TrainOptions.clip must be a positive finite real number, got None"),
        ({"dev_size": -5}, ValueError, r"TrainOptions.dev_size must be a non-negative int, got -5"),
        ({"lr": 0.0}, ValueError, r"TrainOptions.lr must be a positive finite real number, got 0.0"),
        ({"lr": float("nan")}, ValueError, r"TrainOptions.lr must be a positive finite real number, got nan"),
        ({"lr": float("inf")}, ValueError, r"TrainOptions.lr must be a positive finite real number, got inf"),
        ({"lr": "3e-3"}, TypeError, r"TrainOptions.lr must be a positive finite real number, got '3e-3'"),
        ({"weight_decay": -0.1}, ValueError, r"TrainOptions.weight_decay must be in \[0, inf\), got -0.1"),
        ({"label_smoothing": 1.0}, ValueError, r"TrainOptions.label_smoothing must be in \[0, 1\)"),
        ({"label_smoothing": -0.1}, ValueError, r"TrainOptions.label_smoothing must be in"),
        ({"min_lr_ratio": 1.5}, ValueError, r"TrainOptions.min_lr_ratio must be in \[0, 1\]"),
        ({"dropout": 1.0}, ValueError, r"TrainOptions.dropout must be in \[0, 1\)"),
        ({"batch_tokens": 0}, ValueError, r"TrainOptions.batch_tokens must be a positive int, got 0"),
        ({"batch_tokens": 10.5}, TypeError, r"TrainOptions.batch_tokens must be a positive int, got 10.5"),
        ({"steps": 0}, ValueError, r"TrainOptions.steps must be a positive int, got 0"),
        ({"steps": True}, TypeError, r"TrainOptions.steps must be a positive int, got True \(bool\)"),
        ({"stop_after": 0}, ValueError, r"TrainOptions.stop_after must be a positive int, got 0"),
        ({"minutes": 0}, ValueError, r"TrainOptions.minutes must be a positive finite real number, got 0"),
        ({"minutes": float("inf")}, ValueError, r"TrainOptions.minutes must be a positive finite real number, got inf"),
        ({"warmup": -1}, ValueError, r"TrainOptions.warmup must be a non-negative int, got -1"),
        ({"eval_seconds": -1}, ValueError, r"TrainOptions.eval_seconds must be in \[0, inf\], got -1"),
        ({"save_seconds": float("nan")}, ValueError, r"TrainOptions.save_seconds must be in \[0, inf\], got nan"),
        ({"guided_weight": -1}, ValueError, r"TrainOptions.guided_weight must be in \[0, inf\)"),
        ({"entropy_weight": -1}, ValueError, r"TrainOptions.entropy_weight must be in \[0, inf\)"),
        ({"coverage_weight": -1}, ValueError, r"TrainOptions.coverage_weight must be in \[0, inf\)"),
        ({"max_len": 1}, ValueError, r"TrainOptions.max_len must be an int >= 2, got 1"),
        ({"heads": 3}, ValueError, r"TrainOptions.d_model 128 must be divisible by TrainOptions.heads, got TrainOptions.heads 3"),
        ({"attention_layer": 1.0}, TypeError, r"TrainOptions.attention_layer must be an int"),
        ({"resume": "no"}, TypeError, r"TrainOptions.resume must be a bool, got 'no'"),
        ({"out": None}, TypeError, r"TrainOptions.out must be a path"),
    ],
)  # fmt: skip
def test_options_are_checked_when_made(kwargs, error, match):
    with pytest.raises(error, match=match):
        TrainOptions(**{"data": "d", "out": "o", **kwargs})


def test_options_are_checked_again_by_train(tmp_path):
    opts = TrainOptions(data="d", out=str(tmp_path / "m"), steps=1)
    opts.clip = -1.0  # changed after it was made
    with pytest.raises(
        ValueError, match=r"TrainOptions.clip must be a positive finite real number, got -1.0"
    ):
        train(opts, _pairs(10))
    assert not (tmp_path / "m").exists()


def test_options_accept_paths_and_numpy_numbers(tmp_path):
    np = pytest.importorskip("numpy")
    opts = TrainOptions(data=tmp_path / "d", out=tmp_path, steps=np.int64(3), lr=np.float32(0.5))
    assert opts.data == str(tmp_path / "d") and type(opts.steps) is int and opts.lr == 0.5
    assert TrainOptions(data="d", out="o", eval_seconds=float("inf")).eval_seconds == float("inf")


def test_options_take_integer_scalars_and_refuse_bools_for_every_int():
    np = pytest.importorskip("numpy")
    opts = TrainOptions(data="d", out="o", d_model=torch.tensor(32), heads=np.int32(4),
                        max_len=np.int16(9), vocab_size=np.uint8(50))  # fmt: skip
    got = (opts.d_model, opts.heads, opts.max_len, opts.vocab_size)
    assert got == (32, 4, 9, 50) and all(type(v) is int for v in got)
    for name in ("d_model", "heads", "max_len", "seed", "attention_layer", "vocab_size"):
        with pytest.raises(
            TypeError, match=f"TrainOptions.{name} must be an? [a-z -]*int.*, got True"
        ):
            TrainOptions(data="d", out="o", **{name: True})


def test_the_model_options_are_the_configs_fields():
    import dataclasses

    from crossattn.models import Seq2SeqConfig
    from crossattn.training import MODEL_DEFAULTS

    config = {f.name: f for f in dataclasses.fields(Seq2SeqConfig)}
    options = {f.name: f for f in dataclasses.fields(TrainOptions)}
    for name, default in MODEL_DEFAULTS.items():
        assert options[name].type == config[name].type and options[name].default == default
    opts = TrainOptions(data="d", out="o", d_model=24, heads=3, max_len=7, tie_embeddings=False)
    made = opts.model_config(11, 13)
    assert (made.source_vocab_size, made.target_vocab_size) == (11, 13)
    assert {k: getattr(made, k) for k in MODEL_DEFAULTS} == opts.model_settings()
    assert opts.model_settings()["max_len"] == 7 and not opts.model_settings()["tie_embeddings"]


def test_library_and_cli_refuse_with_the_same_rule(tmp_path, capsys):
    from crossattn.commands.train import flag
    from crossattn.training.rules import heads_problem

    with pytest.raises(ValueError) as lib:
        TrainOptions(data="d", out="o", d_model=30, heads=4)
    argv = ["train", "--data", "d", "--out", str(tmp_path / "m"), "--d-model", "30", "--heads", "4"]
    assert main(argv) == 2
    assert str(lib.value) == "TrainOptions.heads: " + heads_problem(30, 4).message
    assert "TrainOptions.d_model 30 must be divisible by TrainOptions.heads" in str(lib.value)
    cli = capsys.readouterr().err
    assert "argument --heads: " + heads_problem(30, 4, flag).message in cli
    assert "--d-model 30 must be divisible by --heads, got --heads 4" in cli


def test_pad_ids_pads_every_row_to_the_longest():
    from crossattn.models.vocab import pad_ids
    from crossattn.training import Encoded

    ids = pad_ids([(5, 6, 7), (), (8,)], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 0], [8, 0, 0]] and ids.dtype == torch.long
    assert pad_ids([(), ()], pad_id=1, min_width=2).tolist() == [[1, 1], [1, 1]]
    batch = collate([Encoded((4, 5), (6,), frozenset()), Encoded((4,), (6, 7, 8), frozenset())],
                    with_align=False)  # fmt: skip
    assert batch.source.tolist() == [[4, 5], [4, 0]]
    assert batch.source_mask.tolist() == [[True, True], [True, False]]
    assert batch.target_in.tolist() == [[1, 6, 0, 0], [1, 6, 7, 8]]
    assert batch.target_out.tolist() == [[6, 2, 0, 0], [6, 7, 8, 2]]


def test_split_dev_refuses_a_negative_dev_size():
    from crossattn.training import split_dev

    assert [len(x) for x in split_dev(40, 5, 0)] == [36, 4]
    with pytest.raises(ValueError, match="dev_size must be a non-negative int, got -5"):
        split_dev(40, -5, 0)


_SRC = "le la chat chien noir blanc dort".split()
_TGT = "the cat dog black white sleeps".split()


def _pairs(n: int, links: bool = True, source=_SRC, target=_TGT, length: int = 3) -> list:
    import random

    from crossattn.data.parallel import ParallelExample

    rng = random.Random(0)
    gold = frozenset((i, i) for i in range(length)) if links else frozenset()
    return [
        ParallelExample(
            tuple(rng.choices(source, k=length)),
            tuple(rng.choices(target, k=length)),
            gold,
            frozenset(),
        )  # fmt: skip
        for _ in range(n)
    ]


def _tiny(out, **kw) -> TrainOptions:
    base = dict(data="", out=str(out), steps=2, d_model=8, heads=2, dim_ff=8, encoder_layers=1,
                decoder_layers=2, batch_tokens=60, warmup=1, dev_size=0, progress=False,
                eval_seconds=float("inf"), save_seconds=float("inf"))  # fmt: skip
    return TrainOptions(**{**base, **kw})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_len": 2}, r"TrainOptions.data: every pair of the training data \(20 pairs\) is "
         r"longer than max_len - 1 = 1 tokens \(the shortest has 3\); raise "
         r"TrainOptions.max_len to at least 4"),
        ({"guided_alignment": True, "attention_head": 2},
         r"TrainOptions.attention_head: got 2, but the model has 2 heads; expected -2..1"),
        ({"guided_alignment": True, "attention_head": -3}, r"attention_head: got -3, but"),
        ({"guided_alignment": True, "attention_layer": 2},
         r"TrainOptions.attention_layer: got 2, but the model has 2 decoder layer\(s\); "
         r"expected -2..1"),
        ({"entropy_weight": 0.1, "attention_layer": -3}, r"attention_layer: got -3, but"),
    ],
)  # fmt: skip
def test_train_checks_data_against_the_model_before_writing(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train(_tiny(tmp_path / "m", **kwargs), _pairs(20))
    assert not (tmp_path / "m").exists()


def test_guided_alignment_takes_the_links_of_examples(tmp_path):
    result = train(_tiny(tmp_path / "m", steps=1, guided_alignment=True), _pairs(20))
    assert result.steps == 1
    with pytest.raises(ValueError, match="guided_alignment needs gold links, but none of the 20 "
                       "sentence pairs has any") as err:  # fmt: skip
        train(_tiny(tmp_path / "n", steps=1, guided_alignment=True), _pairs(20, links=False))
    assert "--" not in str(err.value) and not (tmp_path / "n").exists()


def test_one_decoder_layer_takes_the_default_attention_layer(tmp_path):
    train(_tiny(tmp_path / "m", steps=1, decoder_layers=1, entropy_weight=0.1), _pairs(20))
    assert (
        json.loads((tmp_path / "m" / "config.json").read_text())["train"]["attention_layer"] == -1
    )


@pytest.fixture
def resumable(tmp_path) -> Path:
    out = tmp_path / "m"
    train(_tiny(out, stop_after=1), _pairs(20))
    return out


def test_resume_refuses_another_model_shape(resumable):
    before = {p.name: p.read_bytes() for p in resumable.iterdir()}
    with pytest.raises(ValueError, match=r"resume: these options differ from the model saved in "
                       r".*\(saved -> given\): d_model 8 -> 16, heads 2 -> 1; leave them out "
                       r"to keep the saved model, or train a new model into another "
                       r"TrainOptions.out"):  # fmt: skip
        train(_tiny(resumable, resume=True, d_model=16, heads=1), _pairs(20))
    assert {p.name: p.read_bytes() for p in resumable.iterdir()} == before


def test_resume_keeps_the_saved_model_for_options_left_at_defaults(resumable):
    opts = TrainOptions(data="", out=str(resumable), steps=2, resume=True, batch_tokens=60,
                        dev_size=0, progress=False)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train(opts, _pairs(20)).steps == 1
    assert not [w for w in caught if "resume:" in str(w.message)]  # the same words: no warning
    config = json.loads((resumable / "config.json").read_text())
    for name in ("d_model", "heads", "encoder_layers", "decoder_layers", "dim_ff"):
        assert config["train"][name] == config["model"][name]  # no contradiction
    assert config["model"]["d_model"] == 8


def test_resume_on_unknown_words_warns(resumable):
    new = _pairs(20, source=["xx", "yy", "chat"], target=["aa", "bb", "cat"])
    with pytest.warns(UserWarning, match=r"resume: \d+% of the source tokens and \d+% of the "
                      r"target tokens of the training pairs are unknown to the vocabularies"):  # fmt: skip
        train(_tiny(resumable, resume=True), new)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun is not installed")  # fmt: skip
def test_ddp_two_processes_match_one(corpus, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    common = ["train", "--data", str(corpus["train"]), "--alignments", str(corpus["train_align"]),
              *TINY, "--steps", "3", "--dropout", "0", "--guided-alignment"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "crossattn", *common,
         "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stderr
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "single")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("command", ["train", "demo"])
def test_help_shows_the_default_of_every_option(command):
    """Every option of `crossattn train` and `crossattn demo` says its default (or that it is
    required) in --help."""
    import argparse
    import importlib

    from crossattn.cli import COMMANDS

    parser = argparse.ArgumentParser(prog=f"crossattn {command}")
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    missing = [
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings
        and not isinstance(action, argparse._HelpAction)
        and not re.search(r"\(default: [^)]+\)|\(required\)", (action.help or "") % vars(action))
    ]
    assert not missing, f"options of crossattn {command} whose --help gives no default: {missing}"
    text = parser.format_help()
    assert "(default: 128)" in text if command == "train" else "(default: demo-out, or" in text
