"""What the translation and alignment commands read and write: line ends, one result per input
line, file-to-file and n-best translation, encodings, alignment formats, file modes, and the
defaults every `--help` shows.

The model is a tiny random translator written directly: the tests check the plumbing around it
(which line gives which result), never translation quality.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crossattn import cli
from crossattn.cli import COMMANDS, main
from tests.conftest import write_tiny_translator

SOURCE = "the boy sees water a red car".split()
TARGET = "le garçon voit eau la voiture rouge".split()
MAX_LEN = 10


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("cli_io") / "model"
    root.mkdir()
    write_tiny_translator(root, SOURCE, TARGET, d_model=8, decoder_layers=1, dim_ff=16,
                          max_len=MAX_LEN)  # fmt: skip
    return str(root)


@pytest.fixture(scope="module")
def translator(model):
    from crossattn.models import Translator

    return Translator.load(model)


def _stdin(monkeypatch, data: bytes) -> None:
    """Stdin as Python opens it on POSIX: UTF-8, split on "\\n" only, undecodable bytes escaped."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape",
                            newline="\n")  # fmt: skip
    monkeypatch.setattr(sys, "stdin", text)


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _json_lines(text: str) -> list[dict]:
    """JSON lines; each is split off at "\\n" only, and must not hold another line break that
    `str.splitlines` would split at."""
    assert text.endswith("\n") or text == ""
    lines = text.split("\n")[:-1]
    assert text.splitlines() == lines, "a JSON line holds a line break other than \\n"
    return [json.loads(line) for line in lines]


# ------------------------------------------------------------------ item 7: a trailing "\r"
def test_stdin_crlf_lines_lose_their_carriage_return(monkeypatch, capsys, model):
    _stdin(monkeypatch, b"the boy sees water\r\na red car\r\n")
    code, out, err = _run(capsys, ["translate", "--model", model, "--json"])
    assert code == 0, err
    assert [r["source"] for r in _json_lines(out)] == [
        ["the", "boy", "sees", "water"], ["a", "red", "car"],
    ]  # fmt: skip


def test_input_file_crlf_lines_lose_their_carriage_return(capsys, model, tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"the boy sees water\r\n\r\na red car\r\n")
    code, out, err = _run(capsys, ["translate", "--model", model, "--json", "--input", str(src)])
    assert code == 0, err
    assert [r["source"] for r in _json_lines(out)] == [
        ["the", "boy", "sees", "water"], [], ["a", "red", "car"],
    ]  # fmt: skip


def test_server_sentence_loses_its_trailing_line_end(translator):
    from crossattn.viz.server import TranslationService

    service = TranslationService(translator, beam=2)
    plain = service.answer("the boy sees water")
    for ending in ("\r", "\r\n", "\n"):
        answer = service.answer("the boy sees water" + ending)
        assert answer["source"] == ["the", "boy", "sees", "water"], ending
        assert answer["target"] == plain["target"]


@pytest.mark.slow
def test_real_stdin_crlf_in_a_subprocess(model):
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    result = subprocess.run(
        [sys.executable, "-m", "crossattn", "translate", "--model", model, "--json", "--beam",
         "1", "--threads", "1"],
        input=b"the boy sees water\r\n", capture_output=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["source"] == ["the", "boy", "sees", "water"]


# ---------------------------------------------------------- item 8: one result per input line
def test_json_gives_one_line_per_input_line_empty_ones_included(monkeypatch, capsys, model):
    _stdin(monkeypatch, b"a red car\n\nthe boy\n")
    code, out, err = _run(capsys, ["translate", "--model", model, "--json"])
    assert code == 0, err
    rows = _json_lines(out)
    assert len(rows) == 3
    assert rows[1] == {"source": [], "target": [], "alignment": "", "score": None}
    assert rows[0]["source"] == ["a", "red", "car"] and rows[2]["source"] == ["the", "boy"]
    assert all(set(r) == {"source", "target", "alignment", "score"} for r in rows)


def test_human_format_gives_one_block_per_input_line(monkeypatch, capsys, model, translator):
    _stdin(monkeypatch, b"a red car\n\nthe boy\n")
    code, out, err = _run(capsys, ["translate", "--model", model])
    assert code == 0, err
    lines = out.split("\n")
    assert lines[-1] == "" and len(lines) == 3 * 3 + 1  # 3 lines per block, 3 blocks
    assert lines[3:6] == ["", "", "  ()"]  # the empty input line's block
    first = translator.translate("a red car")
    assert lines[0:2] == [first.translation, first.pharaoh()]


def test_only_newline_splits_a_line(monkeypatch, capsys, model):
    _stdin(monkeypatch, "a red\x0bcar\x1c\u2028the boy\x0c\n".encode())
    code, out, err = _run(capsys, ["translate", "--model", model, "--json"])
    assert code == 0, err
    rows = _json_lines(out)
    assert len(rows) == 1 and rows[0]["source"] == ["a", "red\x0bcar\x1c\u2028the", "boy\x0c"]


def test_output_file_one_line_per_input_line_and_nothing_on_stdout(capsys, model, tmp_path,
                                                                    translator):  # fmt: skip
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("a red car\n\nthe boy\n", encoding="utf-8")
    code, out, err = _run(capsys, ["translate", "--model", model, "--input", str(src),
                                   "--output", str(dst)])  # fmt: skip
    assert code == 0, err
    assert out == ""  # summaries go to stderr
    assert str(dst) in err
    expected = [translator.translate(s).translation for s in ("a red car", "the boy")]
    assert dst.read_text(encoding="utf-8") == f"{expected[0]}\n\n{expected[1]}\n"


def test_output_json_file(capsys, model, tmp_path):
    src, dst = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("\na red car\n\n", encoding="utf-8")
    code, out, err = _run(capsys, ["translate", "--model", model, "--input", str(src),
                                   "--output", str(dst), "--json"])  # fmt: skip
    assert code == 0 and out == "", err
    rows = _json_lines(dst.read_text(encoding="utf-8"))
    assert [r["source"] for r in rows] == [[], ["a", "red", "car"], []]


def test_output_is_written_atomically(monkeypatch, capsys, model, tmp_path):
    from crossattn.models import Translator

    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("a red car\nthe boy\nsees water\n", encoding="utf-8")
    dst.write_text("the previous translation\n", encoding="utf-8")
    real = Translator.translate_batch
    calls = []

    def fail_on_second(self, sentences, **kwargs):
        calls.append(len(sentences))
        if len(calls) == 2:
            raise RuntimeError("killed in the middle")
        return real(self, sentences, **kwargs)

    monkeypatch.setattr(Translator, "translate_batch", fail_on_second)
    argv = ["translate", "--model", model, "--input", str(src), "--output", str(dst),
            "--batch-size", "2"]  # fmt: skip
    with pytest.raises(RuntimeError, match="killed"):
        main(argv)
    assert dst.read_text(encoding="utf-8") == "the previous translation\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]  # no temporary


def test_n_best_is_a_list_inside_the_line(monkeypatch, capsys, model, translator):
    from crossattn.models.beam_state import _length_penalty

    _stdin(monkeypatch, b"a red car\n\n")
    code, out, err = _run(capsys, ["translate", "--model", model, "--json", "--beam", "4",
                                   "--n-best", "3"])  # fmt: skip
    assert code == 0, err
    rows = _json_lines(out)
    assert len(rows) == 2
    best = translator.translate("a red car", beam=4)
    n_best = rows[0]["n_best"]
    assert 1 <= len(n_best) <= 3
    assert n_best[0] == {k: rows[0][k] for k in ("target", "alignment", "score")}
    assert rows[0]["target"] == list(best.target_tokens)
    assert rows[0]["score"] == pytest.approx(best.score, rel=1e-5, abs=1e-5)
    assert len({tuple(h["target"]) for h in n_best}) == len(n_best)  # distinct hypotheses
    ranked = [h["score"] / _length_penalty(len(h["target"]) + 1, 0.6) for h in n_best]
    assert ranked == sorted(ranked, reverse=True)  # best first, as beam search ranks them
    assert rows[1]["n_best"] == [] and rows[1]["source"] == []


def test_n_best_in_a_text_output_is_tab_separated(capsys, model, tmp_path, translator):
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("a red car\n", encoding="utf-8")
    argv = ["translate", "--model", model, "--input", str(src), "--output", str(dst),
            "--n-best", "2"]  # fmt: skip
    code, _, err = _run(capsys, argv)
    assert code == 0, err
    line = dst.read_text(encoding="utf-8").removesuffix("\n")
    hyps = translator.translate_batch(["a red car"], n_best=2)[0]
    assert line.split("\t") == [h.translation for h in hyps]


def test_n_best_above_the_beam_is_refused(capsys, model):
    code, out, err = _run(capsys, ["translate", "--model", model, "--beam", "2", "--n-best", "3",
                                   "a red car"])  # fmt: skip
    assert code == 2 and out == ""
    assert "argument --n-best: got 3, but --beam is 2" in err


def test_batches_go_through_translate_batch(monkeypatch, capsys, model):
    from crossattn.models import Translator

    lines = b"a red car\nthe boy\n\nsees water\nthe red car\nwater\n"
    _stdin(monkeypatch, lines)
    code, one_by_one, err = _run(capsys, ["translate", "--model", model, "--json",
                                          "--batch-size", "1"])  # fmt: skip
    assert code == 0, err
    real = Translator.translate_batch
    sizes = []

    def counting(self, sentences, **kwargs):
        sizes.append(len(sentences))
        return real(self, sentences, **kwargs)

    monkeypatch.setattr(Translator, "translate_batch", counting)
    _stdin(monkeypatch, lines)
    code, batched, err = _run(capsys, ["translate", "--model", model, "--json",
                                       "--batch-size", "2"])  # fmt: skip
    assert code == 0, err
    assert sizes == [2, 2, 1]  # 5 non-empty lines, the empty one needs no model call
    a, b = _json_lines(one_by_one), _json_lines(batched)
    assert [r["target"] for r in a] == [r["target"] for r in b]
    assert [r["score"] for r in b] == pytest.approx([r["score"] for r in a], abs=1e-5)


# ---------------------------------------------------------------- item 9: non-UTF-8 stdin
def test_non_utf8_stdin_is_refused_with_its_line(monkeypatch, capsys, model):
    _stdin(monkeypatch, b"a red car\nthe \xff boy\n")
    code, out, err = _run(capsys, ["translate", "--model", model])
    assert code == 2 and out == "" and "Traceback" not in err
    assert "crossattn translate: error: stdin:2: not UTF-8 (invalid start byte at byte 4)" in err


def test_non_utf8_input_file_is_refused_with_its_line(capsys, model, tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"a red car\n\nthe \xe9 boy\n")
    code, out, err = _run(capsys, ["translate", "--model", model, "--input", str(src)])
    assert code == 2 and out == ""
    assert f"argument --input: {src}:3: not UTF-8" in err


# ---------------------------------------------------------------- item 10: align and aer
def test_aer_on_two_empty_files_is_an_error(capsys, tmp_path):
    gold, hyp = tmp_path / "gold", tmp_path / "hyp"
    gold.write_text("")
    hyp.write_text("")
    code, out, err = _run(capsys, ["aer", str(gold), str(hyp)])
    assert code == 2 and out == ""
    assert f"crossattn aer: error: {gold}: holds no alignment lines" in err


def test_align_skips_an_over_long_pair_with_its_line(capsys, model, tmp_path):
    data = tmp_path / "pairs.txt"
    long_pair = " ".join(["car"] * (MAX_LEN + 1)) + " ||| la"
    data.write_text(f"a red car ||| la voiture rouge\n{long_pair}\nno separator\nthe boy ||| le"
                    " garçon\n", encoding="utf-8")  # fmt: skip
    code, out, err = _run(capsys, ["align", "--model", model, "--data", str(data),
                                   "--skip-bad-lines"])  # fmt: skip
    assert code == 0, err
    lines = out.split("\n")
    assert len(lines) == 5 and lines[1] == "" and lines[2] == "" and lines[-1] == ""
    assert lines[0] and lines[3]
    assert f"{data}:2: the source has {MAX_LEN + 1} words" in err
    assert f"{data}:3: missing separator" in err
    data.write_text(f"a red car ||| la voiture rouge\n{long_pair}\n", encoding="utf-8")
    code, out, err = _run(capsys, ["align", "--model", model, "--data", str(data)])
    assert code == 2 and f"argument --data: {data}:2: the source has {MAX_LEN + 1} words" in err


def test_skip_message_names_the_alignment_file_when_the_bad_line_is_there(tmp_path):
    from crossattn.data.parallel import read_parallel

    text, align = tmp_path / "pairs.txt", tmp_path / "pairs.align"
    text.write_text("a b ||| c d\na b ||| c d\na b ||| c d\n", encoding="utf-8")
    align.write_text("0-0\n0-7\n1-1\n", encoding="utf-8")
    with pytest.warns(UserWarning) as record:
        data = read_parallel(text, alignments=align, skip_bad_lines=True)
    assert data.skipped_lines == [2] and data.lines == [1, 3]
    message = str(record[0].message)
    assert f"{align}:2: alignment link '0-7' is out of range" in message
    assert str(text) not in message  # the text file holds no bad line


# ------------------------------------------------------------ item 11: view, modes, formats
@pytest.mark.parametrize(
    ("option", "value"), [("--layers", "decoder.0"), ("--batch", "1"), ("--step", "0")]
)
@pytest.mark.parametrize("kind", ["tensor.pt", "dict.pt", "plain.safetensors"])
def test_view_refuses_capture_options_on_a_plain_file(capsys, tmp_path, option, value, kind):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / kind
    weights = torch.rand(2, 3)
    if kind == "tensor.pt":
        torch.save(weights, path)
    elif kind == "dict.pt":
        torch.save({"weights": weights}, path)
    else:
        save_file({"weights": weights}, str(path))
    code, out, err = _run(capsys, ["view", str(path), option, value])
    assert code == 2 and out == ""
    assert f"argument {option}: applies only to a capture saved by AttentionRecorder.save" in err
    assert not path.with_suffix(".html").exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_model_directory_has_one_file_mode(tmp_path, umask):
    from crossattn.training import write_json

    old = os.umask(umask)
    try:
        write_tiny_translator(tmp_path, SOURCE, TARGET, d_model=8, decoder_layers=1, dim_ff=16)
        write_json(tmp_path / "extraction.json", {"layers": [0]})
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()}
    assert "model.safetensors" in modes and len(modes) >= 4
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_translate_json_and_server_share_one_alignment_format(monkeypatch, capsys, model,
                                                               translator):  # fmt: skip
    from crossattn.viz.server import TranslationService

    sentence = "the boy sees water"
    served = TranslationService(translator, beam=4).answer(sentence)
    code, out, err = _run(capsys, ["translate", "--model", model, "--json", sentence])
    assert code == 0, err
    row = json.loads(out)
    for key in ("source", "target", "alignment", "score"):
        assert row[key] == served[key], key
    assert isinstance(row["alignment"], str)  # Pharaoh "i-j ...", as `crossattn align` writes
    pairs = [list(link) for link in translator.translate(sentence).alignment]
    code, out, err = _run(capsys, ["translate", "--model", model, "--json",
                                   "--alignment-format", "pairs", sentence])  # fmt: skip
    assert code == 0 and json.loads(out)["alignment"] == pairs
    service = TranslationService(translator, beam=4, alignment_format="pairs")
    assert service.answer(sentence)["alignment"] == pairs


# ------------------------------------------------------------------- --help shows defaults
def _help_entries(text: str) -> dict[str, str]:
    """The option entries of an argparse help text: first option string -> the entry's text."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^  (-[^\s,]+)", line)
        if m:
            current = m.group(1)
            entries[current] = line
        elif current is not None and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and, for a command with actions (``crossattn vqa train``), each action's."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser] + [p for a in subs for sub in a.choices.values() for p in _parsers(sub)]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_of_every_command_shows_its_default(name):
    for parser in _parsers(cli.command_parser(name)):
        _check_defaults_shown(name, parser)


def _check_defaults_shown(name: str, parser: argparse.ArgumentParser) -> None:
    if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        return  # a command of actions: its actions' parsers carry the options
    entries = _help_entries(parser.format_help())
    options = [a for a in parser._actions
               if a.option_strings and not isinstance(a, argparse._HelpAction)]  # fmt: skip
    assert options, name
    for action in options:
        entry = entries.get(action.option_strings[0])
        assert entry is not None, (name, action.option_strings)
        entry = " ".join(entry.split())
        assert "(required)" in entry or re.search(r"\bdefault\b", entry), (name, entry)
        assert "default: None" not in entry, (name, entry)
