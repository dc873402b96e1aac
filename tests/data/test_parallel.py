"""Reading parallel text and Pharaoh alignments: formats, tokenisation and every error path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crossattn.data.parallel import (
    ParallelExample,
    ParallelFormatError,
    format_pharaoh,
    parse_pharaoh,
    read_alignment_file,
    read_parallel,
    tokenize,
)

GOLD = Path(__file__).parents[3] / "shared" / "data" / "alignment-gold"


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _where(path: Path, line: int) -> str:
    return re.escape(f"{path}:{line}: ")


# ------------------------------------------------------------------------------ tokenisation


def test_tokenize_keeps_ideographic_space_and_collapses_ascii_spaces():
    assert tokenize("  a  b   c ") == ("a", "b", "c")
    assert tokenize("官位 \u3000 は") == ("官位", "\u3000", "は")
    assert tokenize("   ") == ()


@pytest.mark.skipif(not GOLD.is_dir(), reason=f"{GOLD} is absent (the shared gold sets)")
def test_jaen_gold_reads_with_every_link_in_range():
    data = read_parallel(GOLD / "jaen.src-tgt", alignments=GOLD / "jaen.gold", one_indexed=True)
    assert len(data) == 582 and data.skipped == 0
    ideographic = sum(w == "\u3000" for e in data for w in e.source + e.target)
    assert ideographic == 5
    # str.split() would drop the U+3000 tokens and shift every gold link after them.
    lines = (GOLD / "jaen.src-tgt").read_text(encoding="utf-8").splitlines()
    shifted = 0
    for line, example in zip(lines, data.examples, strict=True):
        source = line.split(" ||| ")[0]
        if "\u3000" not in example.source:
            assert tuple(source.split()) == example.source
            continue
        assert len(source.split()) == len(example.source) - example.source.count("\u3000")
        first = example.source.index("\u3000")
        shifted += sum(i > first for i, _ in example.sure | example.possible)
    assert shifted > 0


@pytest.mark.skipif(not GOLD.is_dir(), reason=f"{GOLD} is absent (the shared gold sets)")
def test_enfr_gold_with_doubled_spaces_reads_cleanly():
    data = read_parallel(GOLD / "enfr.src-tgt", alignments=GOLD / "enfr.gold", one_indexed=True)
    assert len(data) == 447
    assert all(w for e in data for w in e.source + e.target)  # no empty token
    assert data.examples[0].source == ("2", ".") and data.examples[0].sure == {(0, 0), (1, 1)}


# ------------------------------------------------------------------------------ formats


def test_pipes_tsv_and_auto_detection(tmp_path):
    pipes = _write(tmp_path / "p.txt", "the cat ||| le chat\na dog|||un chien\n")
    tsv = _write(tmp_path / "t.tsv", "the cat\tle chat\na dog\tun chien\n")
    want = [
        ParallelExample(("the", "cat"), ("le", "chat")),
        ParallelExample(("a", "dog"), ("un", "chien")),
    ]
    assert read_parallel(pipes).examples == want
    assert read_parallel(tsv).examples == want
    assert read_parallel(pipes, fmt="pipes").examples == want
    assert read_parallel(tsv, fmt="tsv").examples == want
    with pytest.raises(ParallelFormatError, match=_where(pipes, 1) + "missing separator"):
        read_parallel(pipes, fmt="tsv")
    with pytest.raises(ValueError, match="fmt must be 'auto', 'pipes' or 'tsv', got 'csv'"):
        read_parallel(pipes, fmt="csv")


def test_crlf_and_bom_are_removed(tmp_path):
    path = _write(tmp_path / "w.txt", "\ufeffthe cat ||| le chat\r\nhi ||| salut\r\n".encode())
    assert [e.source for e in read_parallel(path)] == [("the", "cat"), ("hi",)]
    assert read_parallel(path).examples[1].target == ("salut",)


def test_alignments_sure_possible_and_one_indexed(tmp_path):
    text = _write(tmp_path / "x.txt", "does not see ||| ne voit pas\n")
    zero = _write(tmp_path / "x0.align", "1-0 1-2 2-1 0p0 0p1 0p2\n")
    one = _write(tmp_path / "x1.align", "2-1 2-3 3-2 1p1 1p2 1p3\n")
    a = read_parallel(text, alignments=zero).examples[0]
    b = read_parallel(text, alignments=one, one_indexed=True).examples[0]
    assert a == b
    assert a.sure == {(1, 0), (1, 2), (2, 1)} and a.possible == {(0, 0), (0, 1), (0, 2)}
    assert a.pharaoh() == "0p0 0p1 0p2 1-0 1-2 2-1"


def test_a_link_both_sure_and_possible_is_sure():
    sure, possible = parse_pharaoh("0-0 0p0 1p1")
    assert sure == {(0, 0)} and possible == {(1, 1)}
    assert format_pharaoh({(0, 0)}, {(0, 0), (1, 1)}) == "0-0 1p1"


def test_read_alignment_file(tmp_path):
    path = _write(tmp_path / "a.align", "0-0 1p1\n\n2-3\n")
    assert read_alignment_file(path) == [
        (frozenset({(0, 0)}), frozenset({(1, 1)})),
        (frozenset(), frozenset()),
        (frozenset({(2, 3)}), frozenset()),
    ]


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a ||| b\nno separator here\n", 2, "missing separator"),
        ("a ||| b\na ||| b ||| c\n", 2, r"2 separators \('\|\|\|'\) where one is expected"),
        ("a ||| b\n   ||| b\n", 2, "empty source side"),
        ("a ||| b\nc |||  \n", 2, "empty target side"),
        ("a ||| b\n\nc ||| d\n", 2, "missing separator"),  # a blank line inside the data
    ],
)
def test_malformed_text_names_file_and_line(tmp_path, text, line, message):
    path = _write(tmp_path / "bad.txt", text)
    with pytest.raises(ParallelFormatError, match=_where(path, line) + message) as err:
        read_parallel(path)
    assert err.value.line == line and err.value.path == str(path)


def test_malformed_tsv_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.tsv", "a\tb\na\tb\tc\n")
    with pytest.raises(ParallelFormatError, match=_where(path, 2) + "2 separators"):
        read_parallel(path)


@pytest.mark.parametrize(
    ("align", "one_indexed", "message"),
    [
        ("0-0\n0-0 2-1\n", False, r"alignment link '2-1' is out of range for a pair of 2 source"),
        (
            "0-0\n0-5\n",
            False,
            r"alignment link .0-5. is out of range .* \(is the file 1-indexed\? pass one_indexed=True, "
            r"or --one-indexed on the command line\)",
        ),
        ("1-1\n0-1\n", True, "alignment link '0-1' has index 0 but the file is read as 1-indexed"),
        ("1-1\n3-1\n", True, r"alignment link '3-1' is out of range .*\(1-indexed\)"),
        ("0-0\n0:1\n", False, r"bad alignment link '0:1': expected 'i-j' \(sure\) or 'ipj'"),
        ("0-0\n0-x\n", False, "bad alignment link '0-x'"),
    ],
)
def test_bad_alignment_lines_name_file_and_line(tmp_path, align, one_indexed, message):
    text = _write(tmp_path / "t.txt", "a b ||| c d\na b ||| c d\n")
    path = _write(tmp_path / "t.align", align)
    with pytest.raises(ParallelFormatError, match=_where(path, 2) + message):
        read_parallel(text, alignments=path, one_indexed=one_indexed)


def test_different_line_counts_are_an_error_even_when_skipping(tmp_path):
    text = _write(tmp_path / "t.txt", "a ||| b\nc ||| d\n")
    align = _write(tmp_path / "t.align", "0-0\n")
    for skip in (False, True):
        with pytest.raises(
            ParallelFormatError, match=re.escape(f"{align}: has 1 lines but the text {text} has 2")
        ):
            read_parallel(text, alignments=align, skip_bad_lines=skip)


def test_missing_file_and_bad_utf8_are_named(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ParallelFormatError, match=re.escape(f"{missing}: no such file")):
        read_parallel(missing)
    bad = _write(tmp_path / "latin1.txt", b"a ||| b\n" + "café ||| x\n".encode("latin-1"))
    with pytest.raises(ParallelFormatError, match=_where(bad, 2) + "not UTF-8"):
        read_parallel(bad)
    with pytest.raises(ParallelFormatError, match="is a directory"):
        read_parallel(tmp_path)


# ------------------------------------------------------------------------------ skipping


def test_skip_bad_lines_counts_reports_and_keeps_the_rest(tmp_path):
    text = _write(
        tmp_path / "t.txt",
        "a b ||| c d\nno separator\na ||| \ne f ||| g h\ni ||| j\n",
    )
    align = _write(tmp_path / "t.align", "0-0 1-1\n0-0\n0-0\n0-9\n0-0\n")
    with pytest.warns(UserWarning, match=r"skipped 3 bad line\(s\) of 5"):
        data = read_parallel(text, alignments=align, skip_bad_lines=True)
    assert data.skipped == 3 and data.skipped_lines == [2, 3, 4]
    assert [e.source for e in data] == [("a", "b"), ("i",)]
    assert "missing separator" in data.problems[0] and str(align) in data.problems[2]
    # without the option the first bad line raises
    with pytest.raises(ParallelFormatError, match=_where(text, 2)):
        read_parallel(text, alignments=align)


def test_clean_file_skips_nothing_and_does_not_warn(tmp_path, recwarn):
    text = _write(tmp_path / "t.txt", "a ||| b\n")
    data = read_parallel(text, skip_bad_lines=True)
    assert data.skipped == 0 and not data.has_alignments and len(recwarn) == 0


def test_tokenize_refuses_non_strings():
    with pytest.raises(TypeError, match="tokenize expects a str, got NoneType"):
        tokenize(None)  # type: ignore[arg-type]


def test_pharaoh_links_take_ascii_digits_only():
    with pytest.raises(ParallelFormatError, match="bad alignment link '\u0661-0'"):
        parse_pharaoh("\u0661-0")
    with pytest.raises(ParallelFormatError, match="bad alignment link"):
        parse_pharaoh("0-\uff11")  # fullwidth one


def test_blank_lines_at_the_end_of_the_file_end_the_data(tmp_path):
    text = _write(tmp_path / "t.txt", "a b ||| c d\ne ||| f\n\n\n")
    data = read_parallel(text)
    assert [ex.source for ex in data] == [("a", "b"), ("e",)]
    align = _write(tmp_path / "a.txt", "0-0 1-1\n0-0\n\n")
    data = read_parallel(text, alignments=align)
    assert data.examples[1].sure == {(0, 0)}
    # a blank line inside the data is still an error
    inner = _write(tmp_path / "inner.txt", "a ||| b\n\nc ||| d\n")
    with pytest.raises(ParallelFormatError, match=_where(inner, 2) + "missing separator"):
        read_parallel(inner)


def test_swapped_pair_flips_words_and_links_and_swaps_back():
    ex = ParallelExample(("a", "b"), ("x", "y", "z"), frozenset({(0, 2)}), frozenset({(1, 0)}))
    rev = ex.swapped()
    assert rev.source == ("x", "y", "z") and rev.target == ("a", "b")
    assert rev.sure == {(2, 0)} and rev.possible == {(0, 1)}
    assert rev.swapped() == ex
