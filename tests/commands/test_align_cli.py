"""`crossattn align --extraction / --reverse-model / --symmetrize` and `crossattn train
--both-directions`, on tiny models."""

from __future__ import annotations

import json
import shutil

import pytest

from crossattn.align.symmetrize import SYMMETRIZATIONS, symmetrize
from crossattn.cli import main
from tests.conftest import write_tiny_translator

SOURCE = "the boy sees water a red car".split()
TARGET = "le garçon voit eau la voiture rouge".split()
PAIRS = [
    ("a red car", "la voiture rouge"),
    ("the boy sees water", "le garçon voit eau"),
    ("the red boy sees a car", "le garçon rouge voit la voiture"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("align_cli")
    forward, reverse = root / "forward", root / "reverse_model"
    forward.mkdir()
    reverse.mkdir()
    write_tiny_translator(forward, SOURCE, TARGET, seed=1, heads=2, decoder_layers=2)
    write_tiny_translator(reverse, TARGET, SOURCE, seed=2, heads=2, decoder_layers=2)
    data = root / "pairs.txt"
    data.write_text("".join(f"{s} ||| {t}\n" for s, t in PAIRS), encoding="utf-8")
    swapped = root / "swapped.txt"
    swapped.write_text("".join(f"{t} ||| {s}\n" for s, t in PAIRS), encoding="utf-8")
    return root, str(forward), str(reverse), str(data), str(swapped)


def _run(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _links(text: str) -> list[set[tuple[int, int]]]:
    return [
        {tuple(int(x) for x in link.split("-")) for link in line.split()}
        for line in text.rstrip("\n").split("\n")
    ]


def _align(capsys, *argv):
    code, out, err = _run(capsys, ["align", *argv, "--threads", "1"])
    assert code == 0, err
    return _links(out)


@pytest.mark.parametrize("method", SYMMETRIZATIONS)
def test_symmetrize_combines_the_two_directions(capsys, models, method):
    _, forward, reverse, data, swapped = models
    ext = ["--extraction", "default,method=argmax"]  # every word gets a link in each direction
    f = _align(capsys, "--model", forward, "--data", data, *ext)
    b = _align(capsys, "--model", reverse, "--data", swapped, *ext)
    both = _align(capsys, "--model", forward, "--reverse-model", reverse, "--data", data,
                  "--symmetrize", method, *ext)  # fmt: skip
    flipped = [{(i, j) for j, i in links} for links in b]
    assert both == [symmetrize(x, y, method) for x, y in zip(f, flipped)]
    assert f != flipped  # two random models: the combination is not trivial


def test_extraction_overrides_change_the_links(capsys, models):
    _, forward, _, data, _ = models
    low = _align(
        capsys, "--model", forward, "--data", data, "--extraction", "method=threshold,threshold=0"
    )
    assert low == [{(i, j) for i in range(len(s.split())) for j in range(len(t.split()))}
                   for s, t in PAIRS]  # fmt: skip
    one = _align(
        capsys, "--model", forward, "--data", data, "--extraction", "default,method=argmax"
    )
    assert [len(x) for x in one] == [len(t.split()) for _, t in PAIRS]


def test_the_reverse_directory_of_the_model_is_used_by_default(capsys, models, tmp_path):
    _, forward, reverse, data, _ = models
    both = tmp_path / "both"
    shutil.copytree(forward, both)
    shutil.copytree(reverse, both / "reverse")
    ext = ["--extraction", "default,method=argmax"]
    auto = _align(capsys, "--model", str(both), "--data", data, *ext)
    given = _align(capsys, "--model", forward, "--reverse-model", reverse, "--data", data, *ext)
    assert auto == given
    one = _align(capsys, "--model", str(both), "--reverse-model", "none", "--data", data, *ext)
    assert one == _align(capsys, "--model", forward, "--data", data, *ext)


def test_agreement_chooses_an_extraction_and_says_which(capsys, models):
    _, forward, reverse, data, _ = models
    code, out, err = _run(capsys, ["align", "--model", forward, "--reverse-model", reverse,
                                   "--data", data, "--extraction", "agreement"])  # fmt: skip
    assert code == 0, err
    assert "extraction by agreement: layers" in err and len(_links(out)) == len(PAIRS)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--extraction", "shift=sideways"], "argument --extraction: --extraction shift="),
        (["--extraction", "agreement"], "'agreement' needs a reverse model"),
        (["--symmetrize", "union"], "argument --symmetrize: needs --reverse-model DIR"),
        (["--symmetrize", "union", "--reverse-model", "none"], "argument --symmetrize"),
        (["--reverse-model", "/nonexistent/model"], "argument --reverse-model: no such directory"),
    ],
)
def test_errors_name_the_argument(capsys, models, extra, message):
    _, forward, _, data, _ = models
    code, out, err = _run(capsys, ["align", "--model", forward, "--data", data, *extra])
    assert code == 2 and out == ""
    assert message in err


TINY = ["--d-model", "16", "--heads", "2", "--dim-ff", "24", "--encoder-layers", "1",
        "--decoder-layers", "2", "--batch-tokens", "300", "--warmup", "2", "--dev-size", "20",
        "--no-progress", "--threads", "1"]  # fmt: skip


def test_train_both_directions_writes_two_model_directories(capsys, tmp_path):
    from crossattn.data.toy_translation import generate_corpus, write_corpus

    paths = write_corpus(generate_corpus(5, n_train=120, n_dev=0, n_test=6, max_len=8), tmp_path)
    out = tmp_path / "model"
    code, stdout, err = _run(capsys, ["train", "--data", str(paths["train"]), "--out", str(out),
                                      "--steps", "3", "--both-directions", *TINY])  # fmt: skip
    assert code == 0, err
    runs = [json.loads(line) for line in stdout.strip().split("\n")]
    assert [r["out"] for r in runs] == [str(out), str(out / "reverse")]
    assert [r["steps"] for r in runs] == [3, 3]
    src = json.loads((out / "source_vocab.json").read_text())
    rev_tgt = json.loads((out / "reverse" / "target_vocab.json").read_text())
    assert src == rev_tgt  # the reverse model translates target to source
    code, stdout, err = _run(capsys, ["align", "--model", str(out), "--data", str(paths["test"])])
    assert code == 0, err
    assert stdout.count("\n") == 6  # one line per pair (3 steps link little)
