"""Bad input to a `crossattn` command ends with ``crossattn CMD: error: ...`` and exit status 2.

Every case runs on tiny inputs: an untrained model directory written directly, a corpus of a few
lines. `train` checks its options before reading the corpus or writing anything, so its cases
never train (a guard makes `crossattn.training.train` fail if one did).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from crossattn import cli
from crossattn.cli import CommandError, main
from tests.conftest import write_tiny_translator

SOURCE = "le la chat chien noir blanc dort".split()
TARGET = "the cat dog black white sleeps".split()
MAX_LEN = 8


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Paths of the inputs the cases refer to as {name}."""
    from safetensors.torch import save_file

    from crossattn.training import CONFIG_FILE

    root = tmp_path_factory.mktemp("cli_errors")
    model = root / "model"
    model.mkdir()
    write_tiny_translator(model, SOURCE, TARGET, d_model=8, decoder_layers=1, dim_ff=16,
                          max_len=MAX_LEN)  # fmt: skip

    broken = root / "broken_model"  # every file there, but config.json is not JSON
    broken.mkdir()
    for p in model.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / CONFIG_FILE).write_text("{", encoding="utf-8")

    (root / "empty_dir").mkdir()
    (root / "a_file").write_text("not a directory\n", encoding="utf-8")
    (root / "pairs.txt").write_text(
        "le chat dort ||| the cat sleeps\nle chien noir ||| the black dog\n", encoding="utf-8"
    )
    (root / "pairs.align").write_text("0-0 1-1 2-2\n0-0 1-2 2-1\n", encoding="utf-8")
    (root / "short.align").write_text("0-0\n", encoding="utf-8")
    (root / "out_of_range.align").write_text("0-0\n1-3\n", encoding="utf-8")
    (root / "malformed.txt").write_text("le chat dort\n", encoding="utf-8")
    (root / "blank.txt").write_text("", encoding="utf-8")
    (root / "long.txt").write_text(" ".join(["chat"] * 12) + " ||| the\n", encoding="utf-8")
    (root / "corrupt.pt").write_bytes(b"junk\n")
    (root / "corrupt.safetensors").write_bytes(b"junk\n")
    torch.save(torch.rand(3, 4), root / "w.pt")
    save_file({"weights": torch.rand(3, 4)}, str(root / "w.safetensors"))
    return {p.name.replace(".", "_"): str(p) for p in root.iterdir()} | {
        "missing": str(root / "missing"),
        "root": str(root),
    }


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("crossattn.training.train ran: the options were not checked first")

    monkeypatch.setattr("crossattn.training.train", fail)


def _error(capsys, argv: list[str]) -> str:
    """Run the command; assert exit status 2, nothing on stdout, one argparse-style error line."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refuses while parsing
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err)
    assert captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith(f"crossattn {argv[0]}: error: "), captured.err
    assert "Traceback" not in captured.err
    return last


def _case(args: str | list[str], *expected: str):
    """``args``: the argv, as a list or as one string with two spaces between arguments."""
    argv = args.split("  ") if isinstance(args, str) else args
    return pytest.param(argv, expected, id=" ".join(argv))


def _check(capsys, files, args: list[str], expected: tuple[str, ...]) -> None:
    argv = [a.format(**files) for a in args]
    message = _error(capsys, argv)
    for text in expected:
        assert text.format(**files) in message, message


# ------------------------------------------------------------------------ translate / align
MODEL_CASES = [
    _case("translate  --model  {missing}  le chat",
          "argument --model: no such directory: '{missing}'", "expected a model directory"),
    _case("translate  --model  {empty_dir}  le chat",
          "argument --model: ", "config.json is missing: is {empty_dir} a model directory"),
    _case("translate  --model  {a_file}  le chat", "argument --model: '{a_file}' is a file"),
    _case("translate  --model  {broken_model}  le chat",
          "argument --model: cannot load the model in '{broken_model}' (JSONDecodeError"),
    _case("align  --model  {missing}  --data  {pairs_txt}", "argument --model: no such directory"),
    _case("align  --model  {empty_dir}  --data  {pairs_txt}", "config.json is missing"),
    _case("serve  --model  {missing}", "argument --model: no such directory"),
    _case("serve  --model  {empty_dir}", "config.json is missing"),
]  # fmt: skip

TRANSLATE_CASES = [
    _case("translate  --model  {model}  ", "argument sentences: sentence 1 is empty ('')",
          "expected at least one word"),
    _case(["translate", "--model", "{model}", "le chat", "  "], "sentence 2 is empty ('  ')"),
    _case("translate  --model  {model}  " + " ".join(["chat"] * 9),
          "sentence 1 has 9 words", f"this model takes 1 to {MAX_LEN} words"),
    _case("translate  --model  {model}  --length-penalty  nan  le chat",
          "argument --length-penalty: expected a finite number, got 'nan'"),
    _case("translate  --model  {model}  --length-penalty  inf  le chat",
          "argument --length-penalty: expected a finite number, got 'inf'"),
    _case("translate  --model  {model}  --beam  0  le chat",
          "argument --beam: expected an integer >= 1, got '0'"),
    _case("translate  --model  {model}  --input  {missing}",
          "argument --input: no such file: {missing}; expected a UTF-8 text file, one sentence "
          "a line"),
    _case("translate  --model  {model}  --input  {pairs_txt}  le chat",
          "argument --input: give sentences as arguments or --input FILE, not both"),
    _case("translate  --model  {model}  --output  {empty_dir}  le chat",
          "argument --output: '{empty_dir}' is a directory; expected a file path"),
    _case("translate  --model  {model}  --output  {missing}/out.txt  le chat",
          "argument --output: cannot write '{missing}/out.txt': the directory '{missing}' does "
          "not exist"),
    _case("translate  --model  {model}  --batch-size  0  le chat",
          "argument --batch-size: expected an integer >= 1, got '0'"),
    _case("translate  --model  {model}  --n-best  0  le chat",
          "argument --n-best: expected an integer >= 1, got '0'"),
]  # fmt: skip

ALIGN_CASES = [
    _case("align  --model  {model}  --data  {pairs_txt}  --batch-size  0",
          "argument --batch-size: expected an integer >= 1, got '0'"),
    _case("align  --model  {model}  --data  {pairs_txt}  --batch-size  -3",
          "argument --batch-size: expected an integer >= 1, got '-3'"),
    _case("align  --model  {model}  --data  {missing}", "argument --data: {missing}: no such file"),
    _case("align  --model  {model}  --data  {malformed_txt}",
          "argument --data: {malformed_txt}:1: missing separator"),
    _case("align  --model  {model}  --data  {long_txt}",
          "argument --data: {long_txt}:1: the source has 12 words; this model takes at most "
          f"{MAX_LEN} (--skip-bad-lines skips it)"),
]  # fmt: skip

THREADS_CASES = [
    _case(f"{command}  --threads  {value}",
          f"argument --threads: expected an integer >= 1, got '{value}'")
    for command in ("translate  --model  {model}  le",
                    "align  --model  {model}  --data  {pairs_txt}",
                    "train  --data  {pairs_txt}  --out  {missing}", "demo  --out  {missing}")
    for value in ("0", "-2", "two")
]  # fmt: skip


@pytest.mark.parametrize(("args", "expected"), MODEL_CASES + TRANSLATE_CASES + ALIGN_CASES)
def test_translate_align_serve_errors(capsys, files, args, expected):
    _check(capsys, files, args, expected)


@pytest.mark.parametrize(("args", "expected"), THREADS_CASES)
def test_threads_must_be_positive(capsys, files, no_training, args, expected):
    _check(capsys, files, args, expected)


# ---------------------------------------------------------------------------------- train
TRAIN = "train  --data  {pairs_txt}  --out  {root}/out  --steps  1  "
TRAIN_CASES = [
    _case(TRAIN + "--heads  3", "argument --heads: --d-model 128 must be divisible by --heads, "
          "got --heads 3", "expected one of [1, 2, 4, 8, 16]"),
    _case(TRAIN + "--d-model  0", "argument --d-model: expected an integer >= 1, got '0'"),
    _case(TRAIN + "--dropout  2", "argument --dropout: expected a number in [0, 1), got '2'"),
    _case(TRAIN + "--dropout  1", "argument --dropout: expected a number in [0, 1), got '1'"),
    _case(TRAIN + "--steps  -5", "argument --steps: expected an integer >= 1, got '-5'"),
    _case(TRAIN + "--minutes  -1", "argument --minutes: expected a finite number > 0, got '-1'"),
    _case(TRAIN + "--minutes  nan", "argument --minutes: expected a finite number > 0, got 'nan'"),
    _case(TRAIN + "--lr  -1", "argument --lr: expected a finite number > 0, got '-1'"),
    _case(TRAIN + "--batch-tokens  0",
          "argument --batch-tokens: expected an integer >= 1, got '0'"),
    _case(TRAIN + "--max-len  1", "argument --max-len: expected an integer >= 2, got '1'"),
    _case(TRAIN + "--label-smoothing  1.5",
          "argument --label-smoothing: expected a number in [0, 1)"),
    _case(TRAIN + "--warmup  -1", "argument --warmup: expected an integer >= 0, got '-1'"),
    _case(TRAIN + "--entropy-weight  -0.1",
          "argument --entropy-weight: expected a finite number >= 0, got '-0.1'"),
    _case("train  --data  {missing}  --out  {root}/out  --steps  1",
          "argument --data: no such file: {missing}; expected a text file"),
    _case("train  --data  {empty_dir}  --out  {root}/out  --steps  1",
          "argument --data must be a file, got a directory: {empty_dir}; expected a text file"),
    _case(TRAIN + "--alignments  {missing}", "argument --alignments: no such file: {missing}; expected a text file"),
    _case("train  --data  {pairs_txt}  --out  {a_file}  --steps  1",
          "argument --out: '{a_file}' is an existing file; expected a directory"),
    _case("train  --data  {pairs_txt}  --out  {a_file}/model  --steps  1",
          "argument --out: cannot make the directory '{a_file}/model'", "is a file"),
    _case(TRAIN + "--guided-alignment", "argument --guided-alignment: needs gold links: set --alignments"),
    _case(TRAIN + "--alignments  {pairs_align}  --guided-alignment  --attention-layer  7",
          "argument --attention-layer: got 7, but the model has 2 decoder layer(s); "
          "expected -2..1"),
    _case(TRAIN + "--decoder-layers  1  --attention-layer  -2",
          "argument --attention-layer: got -2, but the model has 1 decoder layer(s); "
          "expected -1..0"),
    _case(TRAIN + "--alignments  {pairs_align}  --guided-alignment  --attention-head  9",
          "argument --attention-head: got 9, but the model has 4 heads; expected -4..3"),
    _case("train  --data  {malformed_txt}  --out  {root}/out  --steps  1",
          "argument --data: {malformed_txt}:1: missing separator"),
    _case(TRAIN + "--alignments  {out_of_range_align}",
          "argument --alignments: {out_of_range_align}:2: alignment link '1-3' is out of range",
          "(is the file 1-indexed? pass one_indexed=True, or --one-indexed on the command line)"),
    _case(TRAIN + "--alignments  {short_align}",
          "argument --alignments: {short_align}: has 1 lines but the text {pairs_txt} has 2"),
    _case("train  --data  {blank_txt}  --out  {root}/out  --steps  1",
          "argument --data: '{blank_txt}' holds no sentence pairs"),
    _case(TRAIN + "--max-len  3",
          "every pair of '{pairs_txt}' is longer than max_len - 1 = 2 words",
          "raise --max-len to at least 4"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "expected"), TRAIN_CASES)
def test_train_errors_fire_before_training(capsys, files, no_training, args, expected):
    _check(capsys, files, args, expected)
    assert not Path(files["root"], "out").exists()  # nothing was written


def test_train_checks_the_attention_layer_against_the_checkpoint(capsys, tmp_path, files,
                                                                 no_training):  # fmt: skip
    from crossattn.models import Seq2SeqConfig
    from crossattn.training import CONFIG_FILE, STATE_FILE

    out = tmp_path / "run"
    out.mkdir()
    config = Seq2SeqConfig(source_vocab_size=20, target_vocab_size=20, d_model=8, heads=2,
                           decoder_layers=3, max_len=16)  # fmt: skip
    (out / CONFIG_FILE).write_text(json.dumps({"model": config.to_dict()}))
    (out / STATE_FILE).write_text(json.dumps({"step": 1}))
    argv = ["train", "--data", files["pairs_txt"], "--out", str(out), "--steps", "2", "--resume"]
    message = _error(capsys, [*argv, "--attention-layer", "3"])
    assert f"got 3, but the checkpoint in '{out}' has 3 decoder layer(s); expected -3..2" in message
    message = _error(capsys, [*argv, "--attention-head", "-3"])
    assert "got -3, but the checkpoint" in message and "has 2 heads; expected -2..1" in message
    (out / CONFIG_FILE).write_text("{")
    message = _error(capsys, argv)
    assert f"argument --resume: cannot read the model shape from '{out / CONFIG_FILE}'" in message


def test_train_passes_checked_options_to_train(monkeypatch, files, tmp_path, capsys):
    """Valid options reach `train` unchanged; the default attention layer fits one layer."""
    from crossattn.training import TrainResult

    seen = {}

    def fake_train(opts, examples=None):
        seen["opts"], seen["examples"] = opts, examples
        return TrainResult(Path(opts.out), 1, 0.0, 0.0, {})

    monkeypatch.setattr("crossattn.training.train", fake_train)
    base = ["train", "--data", files["pairs_txt"], "--out", str(tmp_path / "m"), "--steps", "1"]
    assert main([*base, "--threads", "1"]) == 0
    assert seen["opts"].attention_layer == -2 and len(seen["examples"]) == 2
    assert main([*base, "--decoder-layers", "1", "--attention-head", "-1"]) == 0
    assert seen["opts"].attention_layer == -1 and seen["opts"].attention_head == -1
    args = [*base, "--alignments", files["pairs_align"], "--guided-alignment",
            "--attention-layer", "1", "--dropout", "0", "--warmup", "0"]  # fmt: skip
    assert main(args) == 0
    assert seen["opts"].attention_layer == 1 and seen["examples"][0].sure
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["steps"] == 1


# ---------------------------------------------------------------------------------- view
VIEW_CASES = [
    _case("view  {corrupt_pt}", "argument FILE: cannot read '{corrupt_pt}' as a torch.save file",
          "expected a tensor"),
    _case("view  {corrupt_safetensors}",
          "argument FILE: cannot read '{corrupt_safetensors}' as a .safetensors file",
          "SafetensorError"),
    _case("view  {missing}.pt", "argument FILE: no such file: '{missing}.pt'"),
    _case("view  {empty_dir}", "argument FILE: is a directory: '{empty_dir}'"),
    _case("view  {w_pt}  -o  {empty_dir}",
          "argument -o/--out: '{empty_dir}' is a directory; expected a file path"),
    _case("view  {w_pt}  -o  {missing}/page.html",
          "argument -o/--out: cannot write '{missing}/page.html': the directory '{missing}' "
          "does not exist"),
    _case("view  {w_safetensors}  -o  {a_file}/page.html",
          "the directory '{a_file}' is not a directory"),
    _case("view  {w_pt}  --step  abc", "argument --step: expected an integer (a call index) or "
          "one of auto, concat, mean, last, got 'abc'"),
    _case("view  {w_pt}  --threshold  2",
          "argument --threshold: expected a number in [0, 1], got '2'"),
    _case("view  {w_pt}  --source  a b", "source_tokens has 2 tokens but weights have S = 4"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "expected"), VIEW_CASES)
def test_view_errors(capsys, files, args, expected):
    _check(capsys, files, args, expected)


def test_view_step_words(tmp_path, capsys):
    from crossattn.commands.view import step_argument

    assert [step_argument(s) for s in ("auto", "concat", "Mean", "last", "2", "-1")] == [
        None, "concat", "mean", "last", 2, -1,
    ]  # fmt: skip
    torch.save(torch.rand(2, 3), tmp_path / "w.pt")
    assert main(["view", str(tmp_path / "w.pt")]) == 0
    assert capsys.readouterr().out.strip().endswith("w.html")


# --------------------------------------------------------------------------- serve / demo
OTHER_CASES = [
    _case("serve  --model  {model}  --port  99999",
          "argument --port: expected a TCP port in 0..65535 (0: any free port), got '99999'"),
    _case("serve  --model  {model}  --port  -1", "argument --port: expected a TCP port"),
    _case("serve  --model  {model}  --beam  0", "argument --beam: expected an integer >= 1"),
    _case("serve  --model  {model}  --max-words  0",
          "argument --max-words: expected an integer >= 1"),
    _case("demo  --budget-minutes  0", "argument --budget-minutes: expected a finite number > 0"),
    _case("demo  --eval-pairs  0", "argument --eval-pairs: expected an integer >= 1, got '0'"),
    _case("demo  --out  {a_file}", "argument --out: '{a_file}' is an existing file"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "expected"), OTHER_CASES)
def test_serve_and_demo_errors(capsys, files, no_training, args, expected):
    _check(capsys, files, args, expected)


# ------------------------------------------------------------------------- the machinery
@pytest.mark.parametrize(
    ("validator", "good", "bad"),
    [
        (cli.positive_int, {"1": 1, "42": 42}, ["0", "-1", "1.5", "x", ""]),
        (cli.non_negative_int, {"0": 0, "7": 7}, ["-1", "nan"]),
        (cli.finite_float, {"-0.5": -0.5, "1e3": 1000.0}, ["nan", "inf", "-inf", "x"]),
        (cli.positive_float, {"0.1": 0.1}, ["0", "-1", "nan", "inf"]),
        (cli.non_negative_float, {"0": 0.0, "2.5": 2.5}, ["-0.1", "nan", "inf"]),
        (cli.port, {"0": 0, "65535": 65535}, ["-1", "65536", "99999", "http"]),
        (cli.float_range(0.0, 1.0, high_open=True), {"0": 0.0, "0.99": 0.99}, ["1", "-0.1", "nan"]),
        (cli.float_range(0.0, 1.0), {"1": 1.0}, ["1.01"]),
    ],
)
def test_validators(validator, good, bad):
    for text, value in good.items():
        assert validator(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=f"got {text!r}"):
            validator(text)


def test_unexpected_exceptions_keep_their_traceback(monkeypatch):
    """Only `CommandError` becomes a clean exit 2; a bug in a command still raises."""
    from crossattn.commands import aer

    def buggy(args):
        raise ValueError("a bug, not an input error")

    monkeypatch.setattr(aer, "run", buggy)
    with pytest.raises(ValueError, match="a bug"):
        main(["aer", "gold", "hyp"])


def test_input_errors_marks_only_the_wrapped_block():
    with pytest.raises(CommandError, match="^argument --data: bad line$"):
        with cli.input_errors("argument --data"):
            raise ValueError("bad line")
    with pytest.raises(KeyError):
        with cli.input_errors("argument --data"):
            raise KeyError("not an input error")
