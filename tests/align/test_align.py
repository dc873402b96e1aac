"""AER against the published figures, the `crossattn aer` command, and alignment extraction."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from crossattn.align import (
    DEFAULT_EXTRACTION,
    AERResult,
    ExtractionConfig,
    aer,
    alignment_scores,
    extract_alignment,
    read_alignments,
    select_extraction,
    word_links_from_subwords,
)
from crossattn.cli import main
from crossattn.data import ParallelExample

GOLD = Path(__file__).parents[3] / "shared" / "data" / "alignment-gold"
needs_gold = pytest.mark.skipif(
    not GOLD.is_dir(),
    reason=f"the shared gold sets are absent ({GOLD}); they sit beside the project checkout",
)

# (gold, hypothesis, published AER in %); zh-en computes to 13.3 pooled (see the gold README)
PUBLISHED = [
    ("enfr", "enfr.awesome-align.out", 4.1),
    ("roen", "roen.awesome-align.out", 20.7),
    ("jaen", "jaen.awesome-align.out", 37.4),
    ("zhen", "zhen.awesome-align.out", 13.3),
    ("enfr", "giza/test.enfr.grow-diagonal.talp", 5.9),
    ("roen", "giza/test.roen.grow-diagonal.talp", 27.9),
    ("enfr", "giza/test.enfr.grow-diagonal-final.talp", 6.2),
    ("roen", "giza/test.roen.grow-diagonal-final.talp", 26.4),
]


# ------------------------------------------------------------------------------ AER


def test_aer_by_hand():
    gold = [ParallelExample(("a", "b", "c"), ("x", "y", "z"), frozenset({(0, 0), (1, 1)}),
                            frozenset({(2, 1)}))]  # fmt: skip
    hyp = [{(0, 0), (2, 1), (2, 2)}]
    result = aer(gold, hyp)
    # |A| = 3, |S| = 2, |A ∩ S| = 1, |A ∩ P| = 2
    assert result.aer == pytest.approx(1 - 3 / 5)
    assert result.precision == pytest.approx(2 / 3) and result.recall == pytest.approx(1 / 2)
    assert str(result) == "AER 40.00 P 66.67 R 50.00"
    # gold as (sure, possible) tuples and a hypothesis with possible links count the same
    tuples = [(frozenset({(0, 0), (1, 1)}), frozenset({(2, 1)}))]
    assert aer(tuples, [(frozenset({(0, 0)}), frozenset({(2, 1), (2, 2)}))]) == result
    # reversed hypothesis
    assert aer(gold, [{(0, 0), (1, 2), (2, 2)}], reverse=True) == result
    # Pharaoh lines (0-indexed), on either side
    assert aer(["0-0 1-1 2p1"], ["0-0 2-1 2p2"]) == result
    assert aer(["0-1"], ["1-0"]).aer == 1.0


def test_aer_pools_links_instead_of_averaging_sentences():
    gold = [{(0, 0)}, {(0, 0), (1, 1), (2, 2), (3, 3)}]
    hyp = [{(0, 1)}, {(0, 0), (1, 1), (2, 2), (3, 3)}]
    pooled = aer(gold, hyp)
    assert pooled.aer == pytest.approx(1 - 8 / 10)  # per sentence it would be (1 + 0) / 2
    assert pooled.sentences == 2 and pooled.n_hypothesis == 5 and pooled.n_sure == 5


def test_aer_edge_cases_and_errors():
    assert aer([{(0, 0)}], [set()]) == AERResult(1.0, 0.0, 0.0, 0, 1, 0, 0, 1)
    assert aer([set()], [set()]).aer == 0.0
    with pytest.raises(ValueError, match="gold has 2 sentences but hypothesis has 1"):
        aer([set(), set()], [set()])
    with pytest.raises(TypeError, match=r"hypothesis\[0\] holds '0-1'; a link is a \(source"):
        aer([{(0, 1)}], [{"0-1"}])
    with pytest.raises(TypeError, match=r"gold\[1\] must be a set of \(i, j\) links.*got int"):
        aer([set(), 5], [set(), set()])
    with pytest.raises(ValueError, match=r"gold\[0\]: bad alignment link '0-x'"):
        aer(["0-x"], ["0-0"])


@needs_gold
@pytest.mark.parametrize(("pair", "hyp", "published"), PUBLISHED)
def test_reproduces_published_aer(pair, hyp, published):
    gold = read_alignments(GOLD / f"{pair}.gold", one_indexed=True)
    result = aer(gold, read_alignments(GOLD / hyp))
    assert abs(100 * result.aer - published) <= 0.1, (pair, hyp, result)


@needs_gold
def test_zhen_pooled_is_13_3_and_within_0_1_of_the_published_13_4():
    gold = read_alignments(GOLD / "zhen.gold", one_indexed=True)
    result = aer(gold, read_alignments(GOLD / "zhen.awesome-align.out"))
    assert f"{100 * result.aer:.1f}" == "13.3" and abs(100 * result.aer - 13.4) <= 0.1


@needs_gold
def test_per_sentence_average_trap():
    """Averaging per sentence gives en-fr 3.97, not the pooled (published) 4.07."""
    gold = read_alignments(GOLD / "enfr.gold", one_indexed=True)
    hyp = read_alignments(GOLD / "enfr.awesome-align.out")
    per_sentence = [aer([g], [h]).aer for g, h in zip(gold, hyp)]
    average = 100 * sum(per_sentence) / len(per_sentence)
    assert f"{average:.2f}" == "3.97"
    assert f"{100 * aer(gold, hyp).aer:.2f}" == "4.07"


@needs_gold
def test_one_indexed_gold_trap():
    """Reading the 1-indexed gold as 0-indexed shifts every link: en-fr jumps to 43.72."""
    hyp = read_alignments(GOLD / "enfr.awesome-align.out")
    wrong = aer(read_alignments(GOLD / "enfr.gold"), hyp)
    right = aer(read_alignments(GOLD / "enfr.gold", one_indexed=True), hyp)
    assert f"{100 * wrong.aer:.2f}" == "43.72" and f"{100 * right.aer:.2f}" == "4.07"


# ------------------------------------------------------------------------------ the command


@needs_gold
def test_cli_prints_exactly_one_line(capsys):
    rc = main(["aer", str(GOLD / "enfr.gold"), str(GOLD / "enfr.awesome-align.out"),
               "--gold-one-indexed"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0 and captured.out == "AER 4.07 P 96.27 R 95.42\n" and captured.err == ""


@needs_gold
def test_cli_json_and_the_one_indexed_warning(capsys):
    gold, hyp = str(GOLD / "enfr.gold"), str(GOLD / "enfr.awesome-align.out")
    assert main(["aer", gold, hyp, "--gold-one-indexed", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    data = json.loads(out)
    assert (data["aer"], data["precision"], data["recall"]) == (4.07, 96.27, 95.42)
    assert data["sentences"] == 447
    assert main(["aer", gold, hyp]) == 0  # forgot --gold-one-indexed
    captured = capsys.readouterr()
    assert captured.out == "AER 43.72 P 61.99 R 47.75\n"
    assert "never uses index 0" in captured.err and "--gold-one-indexed" in captured.err


def test_cli_on_small_files_and_reverse(tmp_path, capsys):
    gold = tmp_path / "g.align"
    gold.write_text("1-1 2-2 3p2\n", encoding="utf-8")  # 1-indexed
    hyp = tmp_path / "h.align"
    hyp.write_text("0-0 2-1 2-2\n", encoding="utf-8")
    rev = tmp_path / "r.align"
    rev.write_text("0-0 1-2 2-2\n", encoding="utf-8")
    assert main(["aer", str(gold), str(hyp), "--gold-one-indexed"]) == 0
    assert capsys.readouterr().out == "AER 40.00 P 66.67 R 50.00\n"
    assert main(["aer", str(gold), str(rev), "--gold-one-indexed", "--reverse"]) == 0
    assert capsys.readouterr().out == "AER 40.00 P 66.67 R 50.00\n"


def test_cli_errors_name_file_and_line_and_exit_2(tmp_path, capsys):
    good = tmp_path / "good.align"
    good.write_text("0-0\n1-1\n", encoding="utf-8")
    bad = tmp_path / "bad.align"
    bad.write_text("0-0\n1=1\n", encoding="utf-8")
    short = tmp_path / "short.align"
    short.write_text("0-0\n", encoding="utf-8")
    missing = tmp_path / "missing.align"
    cases = [
        ([str(good), str(bad)], f"{bad}:2: bad alignment link '1=1'"),
        ([str(bad), str(good)], f"{bad}:2: bad alignment link '1=1'"),
        ([str(good), str(short)], f"{short}: has 1 lines but the gold {good} has 2"),
        ([str(missing), str(good)], f"{missing}: no such file"),
        (
            [str(good), str(good), "--gold-one-indexed"],
            f"{good}:1: alignment link '0-0' has index 0",
        ),
    ]
    for args, message in cases:
        assert main(["aer", *args]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("crossattn aer: error: ") and message in captured.err


# ------------------------------------------------------------------------------ extraction


def _planted(
    n_src: int,
    n_tgt: int,
    perm: list[int],
    *,
    layers: int = 3,
    heads: int = 4,
    best: tuple[int, int] = (1, 2),
    shift: str = "predict",
    peak: float = 0.8,
    eos_mass: float = 0.0,
    gen: torch.Generator,
) -> torch.Tensor:
    """(layers, heads, n_tgt + 1, n_src + 1) attention: random softmax everywhere except head
    ``best``, where the row of target word j (by ``shift``) puts ``peak`` on source word
    perm[j]; the last column is the source EOS, given ``eos_mass`` in the planted rows."""
    logits = 2.0 * torch.randn(layers, heads, n_tgt + 1, n_src + 1, generator=gen)
    w = logits.softmax(-1)
    rows = torch.rand(n_tgt + 1, n_src + 1, generator=gen)
    rows[:, -1] = 0
    rows = (1 - peak - eos_mass) * rows / rows.sum(-1, keepdim=True)
    rows[:, -1] = eos_mass
    offset = 0 if shift == "predict" else 1
    for j, i in enumerate(perm):
        rows[j + offset, i] += peak
    if offset == 0:
        rows[n_tgt] = w[best[0], best[1], n_tgt]
    else:
        rows[0] = w[best[0], best[1], 0]
    w[best[0], best[1]] = rows
    return w


def _noisy_permutation_data(n: int, seed: int, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    weights, gold = [], []
    for _ in range(n):
        length = int(torch.randint(3, 12, (1,), generator=gen))
        perm = torch.randperm(length, generator=gen).tolist()
        weights.append(_planted(length, length, perm, gen=gen, **kwargs))
        gold.append(
            ParallelExample(
                tuple(f"s{k}" for k in range(length)),
                tuple(f"t{k}" for k in range(length)),
                frozenset((i, j) for j, i in enumerate(perm)),
            )
        )
    return weights, gold


def test_extract_recovers_a_planted_permutation():
    gen = torch.Generator().manual_seed(0)
    perm = [3, 0, 4, 1, 2, 6, 5]
    w = _planted(7, 7, perm, gen=gen, eos_mass=0.15)
    want = {(i, j) for j, i in enumerate(perm)}
    for method in ("threshold", "argmax", "argmax_threshold", "bidirectional"):
        config = ExtractionConfig((1,), (2,), "predict", method, 0.5)
        assert extract_alignment(w, config, 7, 7) == want, method
    # the same map read one row later (the "feed" row) is off by one target word
    wrong = extract_alignment(w, ExtractionConfig((1,), (2,), "feed", "argmax"), 7, 7)
    assert len(wrong & want) <= 1
    # negative indices count from the last layer / head
    assert extract_alignment(w, ExtractionConfig((-2,), (-2,), "predict", "argmax"), 7, 7) == want


def test_the_shift_option_reads_the_feeding_row():
    gen = torch.Generator().manual_seed(1)
    perm = [2, 0, 1, 4, 3]
    w = _planted(5, 5, perm, gen=gen, shift="feed")
    want = {(i, j) for j, i in enumerate(perm)}
    assert extract_alignment(w, ExtractionConfig((1,), (2,), "feed", "argmax"), 5, 5) == want
    assert extract_alignment(w, ExtractionConfig((1,), (2,), "predict", "argmax"), 5, 5) != want
    averaged = alignment_scores(w, ExtractionConfig((1,), (2,), "average"), 5, 5)
    feed = alignment_scores(w, ExtractionConfig((1,), (2,), "feed"), 5, 5)
    predict = alignment_scores(w, ExtractionConfig((1,), (2,), "predict"), 5, 5)
    mean = 0.5 * (w[1, 2, :5, :5] + w[1, 2, 1:6, :5])
    torch.testing.assert_close(averaged, mean / mean.sum(-1, keepdim=True))
    assert not torch.allclose(feed, predict)


def test_scores_drop_special_columns_and_renormalise():
    gen = torch.Generator().manual_seed(2)
    w = torch.rand(2, 3, 6, 7, generator=gen, dtype=torch.float64).softmax(-1)
    # column 0 is a source BOS, columns 5..6 are EOS and padding; 4 words, 5 target words
    scores = alignment_scores(w, ExtractionConfig(shift="predict"), 4, 5, source_start=1)
    assert scores.shape == (5, 4) and scores.dtype == torch.float64
    torch.testing.assert_close(scores.sum(-1), torch.ones(5, dtype=torch.float64))
    mean = w[:, :, :5, 1:5].mean(dim=(0, 1))
    torch.testing.assert_close(scores, mean / mean.sum(-1, keepdim=True))
    # defaults: all columns from source_start on, T - 1 target words
    assert alignment_scores(w, ExtractionConfig(shift="feed")).shape == (5, 7)


def test_threshold_keeps_one_to_many_and_argmax_does_not():
    # target word 0 splits its attention between source words 0 and 2
    w = torch.tensor([[0.0, 0.0, 0.0], [0.45, 0.1, 0.45], [0.0, 1.0, 0.0]])[None, None]
    one_to_many = extract_alignment(w, ExtractionConfig(shift="feed", method="threshold",
                                                        threshold=0.3), 3, 2)  # fmt: skip
    assert one_to_many == {(0, 0), (2, 0), (1, 1)}
    single = extract_alignment(w, ExtractionConfig(shift="feed", method="argmax"), 3, 2)
    assert single in ({(0, 0), (1, 1)}, {(2, 0), (1, 1)})


def test_bidirectional_by_hand():
    # rows (target -> source) [[.6, .4], [.9, .1]]; columns normalised: [[.4, .8], [.6, .2]]
    w = torch.tensor([[0.6, 0.4], [0.9, 0.1], [0.5, 0.5]], dtype=torch.float64)
    config = ExtractionConfig(shift="predict", method="bidirectional", threshold=0.3)
    assert extract_alignment(w, config, 2, 2) == {(0, 0), (1, 0), (0, 1)}
    config = ExtractionConfig(shift="predict", method="bidirectional", threshold=0.5)
    assert extract_alignment(w, config, 2, 2) == {(0, 1)}


def test_select_extraction_finds_the_planted_head_and_shift():
    weights, gold = _noisy_permutation_data(60, seed=3, best=(2, 1), shift="feed")
    config = select_extraction(weights, gold)
    assert (config.layers, config.heads, config.shift) == ((2,), (1,), "feed")
    assert config.dev_aer == 0.0
    hyp = [
        extract_alignment(w, config, len(g.source), len(g.target)) for w, g in zip(weights, gold)
    ]
    assert aer(gold, hyp).aer == 0.0


def test_select_extraction_reports_the_aer_extract_alignment_gets():
    """The vectorised search and the per-sentence extraction agree on noisy maps."""
    weights, gold = _noisy_permutation_data(40, seed=4, peak=0.3)
    for method in ("threshold", "argmax", "argmax_threshold", "bidirectional"):
        config = select_extraction(weights, gold, methods=[method])
        hyp = [
            extract_alignment(w, config, len(g.source), len(g.target))
            for w, g in zip(weights, gold)
        ]
        assert config.method == method
        assert aer(gold, hyp).aer == pytest.approx(config.dev_aer, abs=1e-6)
    assert select_extraction(weights, gold).dev_aer <= config.dev_aer


def test_select_extraction_with_explicit_counts_and_tuples():
    weights, gold = _noisy_permutation_data(20, seed=5)
    tuples = [(g.sure, g.possible) for g in gold]
    config = select_extraction(
        weights,
        tuples,
        n_source_words=[len(g.source) for g in gold],
        n_target_words=[len(g.target) for g in gold],
    )
    assert config == select_extraction(weights, gold)
    with pytest.raises(ValueError, match="give n_source_words and n_target_words"):
        select_extraction(weights, tuples)


def test_default_extraction_needs_no_gold_and_round_trips_json():
    assert DEFAULT_EXTRACTION.layers is None and DEFAULT_EXTRACTION.heads is None
    assert DEFAULT_EXTRACTION.shift == "predict" and DEFAULT_EXTRACTION.dev_aer is None
    for config in (DEFAULT_EXTRACTION, ExtractionConfig((0, 2), (1,), "feed", "argmax", 0.0, 0.05)):
        data = json.loads(json.dumps(config.to_dict()))
        assert ExtractionConfig.from_dict(data) == config
        assert ExtractionConfig.from_json(config.to_json()) == config
    assert DEFAULT_EXTRACTION.describe() == (
        "layers all, heads all, shift predict, bidirectional >= 0.30"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"shift": "next"},
            r"ExtractionConfig.shift must be one of 'feed', 'predict', 'average'; got 'next'",
        ),
        ({"method": "max"}, "ExtractionConfig.method must be one of"),
        ({"threshold": 1.5}, r"ExtractionConfig.threshold must be in \[0, 1\], got 1.5"),
        ({"layers": ()}, "ExtractionConfig.layers must be None or a non-empty tuple of ints"),
        ({"heads": (0.5,)}, r"ExtractionConfig.heads\[0\] must be an int, got 0.5"),
        ({"layers": (True,)}, r"ExtractionConfig.layers\[0\] must be an int, got True \(bool\)"),
    ],
)
def test_bad_configs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExtractionConfig(**kwargs)
    with pytest.raises(TypeError, match=r"ExtractionConfig.threshold must be a real number in \[0, 1\], got 'x'"):  # fmt: skip
        ExtractionConfig(threshold="x")


def test_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown ExtractionConfig keys \['layer'\]"):
        ExtractionConfig.from_dict({"layer": 1})


def test_bad_weights_raise():
    w = torch.rand(2, 3, 5, 6).softmax(-1)
    with pytest.raises(TypeError, match="weights must be a torch.Tensor"):
        extract_alignment(w.numpy(), DEFAULT_EXTRACTION, 4, 4)
    with pytest.raises(ValueError, match=r"shape \(layers, heads, T, S\).*got \(1, 2, 3, 5, 6\)"):
        extract_alignment(w[None], DEFAULT_EXTRACTION, 4, 4)
    with pytest.raises(ValueError, match="weights have S=6 source positions but source words 0..6"):
        extract_alignment(w, DEFAULT_EXTRACTION, 7, 4)
    with pytest.raises(ValueError, match=r"T=5 decoder positions but shift='feed' .* needs 6"):
        extract_alignment(w, ExtractionConfig(shift="feed"), 4, 5)
    # T = 5 fits "predict" (row j speaks for target word j): one-hot rows give their links
    peaked = torch.zeros(2, 3, 5, 6)
    for j, i in enumerate([1, 0, 3, 2, 2]):
        peaked[:, :, j, i] = 1.0
    links = extract_alignment(peaked, ExtractionConfig(shift="predict"), 4, 5)
    assert links == {(1, 0), (0, 1), (3, 2), (2, 3), (2, 4)}
    with pytest.raises(
        ValueError, match="ExtractionConfig.layers has 2 but the weights have 2 layers"
    ):
        extract_alignment(w, ExtractionConfig(layers=(2,)), 4, 4)
    with pytest.raises(ValueError, match="n_source_words and n_target_words must be >= 1"):
        extract_alignment(w, DEFAULT_EXTRACTION, 0, 4)
    poisoned = w.clone()
    poisoned[:, :, 1, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or inf at the positions of real words"):
        extract_alignment(poisoned, DEFAULT_EXTRACTION, 4, 4)
    # NaN outside the real words (padding) is ignored
    padded = w.clone()
    padded[:, :, :, 5] = math.nan
    assert extract_alignment(padded, DEFAULT_EXTRACTION, 4, 4) == extract_alignment(
        w[..., :5], DEFAULT_EXTRACTION, 4, 4
    )


def test_select_extraction_errors():
    weights, gold = _noisy_permutation_data(4, seed=6)
    with pytest.raises(ValueError, match=r"weights_list \(4\) and gold_list \(3\)"):
        select_extraction(weights, gold[:3])
    mixed = weights[:3] + [weights[3][:2]]
    with pytest.raises(ValueError, match=r"weights_list\[3\] has \(layers, heads\) = \(2, 4\)"):
        select_extraction(mixed, gold)


def test_read_alignments_reports_line(tmp_path):
    path = tmp_path / "a.align"
    path.write_text("0-0\n0-0 x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: bad alignment link 'x'")):
        read_alignments(path)


def test_subword_links_map_back_to_words():
    # source "un ##able cat" (words 0 0 1), target "in ##capable chat" (words 0 0 1)
    links = {(0, 0), (1, 1), (1, 0), (2, 2)}
    assert word_links_from_subwords(links, [0, 0, 1], [0, 0, 1]) == {(0, 0), (1, 1)}
    with pytest.raises(ValueError, match=r"subword link \(3, 0\) is out of range for 3 source"):
        word_links_from_subwords({(3, 0)}, [0, 0, 1], [0, 0, 1])


# ------------------------------------------------------------------------------ edge cases


def test_select_extraction_with_an_unsorted_grid_reports_the_right_threshold_and_aer():
    weights, gold = _noisy_permutation_data(20, seed=4, peak=0.3)
    for method in ("threshold", "argmax_threshold", "bidirectional"):
        config = select_extraction(weights, gold, methods=[method], thresholds=[0.9, 0.05, 0.9])
        assert config.threshold in (0.9, 0.05)
        hyp = [
            extract_alignment(w, config, len(g.source), len(g.target))
            for w, g in zip(weights, gold)
        ]
        assert aer(gold, hyp).aer == pytest.approx(config.dev_aer, abs=1e-6), method
        # the order of the grid does not matter
        assert config == select_extraction(weights, gold, methods=[method], thresholds=[0.05, 0.9])
    # the threshold is reported as given, not rounded through float32
    config = select_extraction(weights, gold, methods=["threshold"], thresholds=[0.12345])
    assert config.threshold == 0.12345


def test_negative_weights_are_refused():
    w = torch.tensor([[1.0, -0.9, 0.0], [1.0, 0.0, 0.0]])
    config = ExtractionConfig(shift="predict")
    with pytest.raises(ValueError, match=r"weights must be non-negative .* minimum of -0\.9"):
        alignment_scores(w, config, 3, 1)
    with pytest.raises(ValueError, match="weights must be non-negative"):
        extract_alignment(w, config, 3, 1)
    weights, gold = _noisy_permutation_data(3, seed=7)
    weights[1] = weights[1].clone()
    weights[1][0, 0, 0, 0] = -0.1
    with pytest.raises(ValueError, match=r"weights_list\[1\] must be non-negative"):
        select_extraction(weights, gold)
    weights[1][0, 0, 0, 0] = math.inf
    with pytest.raises(ValueError, match=r"weights_list\[1\] holds NaN or inf"):
        select_extraction(weights, gold)
    # negative values outside the real words (a padding column) are ignored
    padded = torch.tensor([[0.5, 0.5, -1.0], [1.0, 0.0, -1.0]])
    assert extract_alignment(padded, config, 2, 1) == extract_alignment(padded[:, :2], config)


@pytest.mark.parametrize("method", ["threshold", "argmax", "argmax_threshold", "bidirectional"])
@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_rows_without_attention_mass_get_no_link(method, threshold):
    config = ExtractionConfig(shift="predict", method=method, threshold=threshold)
    zero = torch.zeros(3, 3)
    assert extract_alignment(zero, config, 3, 2) == set()
    # target word 0 attends to source word 1; target word 1 has no mass on the source words
    w = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    links = extract_alignment(w, config, 2, 2)
    assert all(j == 0 for _, j in links) and (1, 0) in links
    torch.testing.assert_close(alignment_scores(w, config, 2, 2)[1], torch.zeros(2))


def test_select_extraction_agrees_with_extract_on_rows_without_mass():
    weights, gold = _noisy_permutation_data(10, seed=8, peak=0.3)
    for w in weights[:4]:
        w.zero_()  # no target word attends to any source word, whatever the shift
    for method in ("threshold", "argmax", "argmax_threshold", "bidirectional"):
        config = select_extraction(
            weights, gold, methods=[method], thresholds=[0.0, 0.3], units=[(None, None)]
        )
        hyp = [
            extract_alignment(w, config, len(g.source), len(g.target))
            for w, g in zip(weights, gold)
        ]
        assert all(not links for links in hyp[:4]), method
        assert aer(gold, hyp).aer == pytest.approx(config.dev_aer, abs=1e-6), method


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shifts": []}, "shifts is empty"),
        ({"methods": []}, "methods is empty"),
        ({"thresholds": []}, r"thresholds is empty but methods \['threshold'"),
        ({"units": []}, "units is empty"),
        ({"shifts": ["next"]}, r"shifts holds \['next'\]"),
        ({"methods": ["max"]}, r"methods holds \['max'\]"),
        ({"thresholds": [0.5, 1.5]}, r"thresholds\[1\] must be in \[0, 1\], got 1.5"),
        ({"thresholds": [math.nan]}, r"thresholds\[0\] must be in \[0, 1\], got nan"),
        ({"units": [(0,)]}, r"units\[0\] must be a \(layers, heads\) pair"),
        ({"units": [((0.5,), None)]}, r"ExtractionConfig.layers\[0\] must be an int"),
        ({"n_source_words": [3]}, "n_source_words has 1 entries but weights_list has 4"),
        ({"n_target_words": [3] * 5}, "n_target_words has 5 entries but weights_list has 4"),
        ({"n_source_words": [], "n_target_words": []}, "n_source_words has 0 entries"),
        ({"source_start": 0.5}, "source_start must be a non-negative int, got 0.5"),
    ],
)
def test_select_extraction_refuses_empty_and_mismatched_grids(kwargs, message):
    weights, gold = _noisy_permutation_data(4, seed=6)
    with pytest.raises(ValueError if "source_start" not in kwargs else TypeError, match=message):
        select_extraction(weights, gold, **kwargs)


def test_select_extraction_grid_edge_cases_that_work():
    weights, gold = _noisy_permutation_data(4, seed=6)
    # argmax needs no threshold
    config = select_extraction(weights, gold, methods=["argmax"], thresholds=[])
    assert config.method == "argmax" and 0.0 <= config.dev_aer <= 1.0
    # NumPy numbers in the counts and the grid
    np = pytest.importorskip("numpy")
    tuples = [(g.sure, g.possible) for g in gold]
    config = select_extraction(
        weights,
        tuples,
        n_source_words=np.array([len(g.source) for g in gold]),
        n_target_words=[np.int64(len(g.target)) for g in gold],
        thresholds=np.array([0.3, 0.1]),
    )
    assert config == select_extraction(weights, gold, thresholds=[0.1, 0.3])
    assert type(config.threshold) is float


def test_select_extraction_refuses_gold_without_sure_links():
    weights, gold = _noisy_permutation_data(3, seed=9)
    counts = {
        "n_source_words": [len(g.source) for g in gold],
        "n_target_words": [len(g.target) for g in gold],
    }
    with pytest.raises(ValueError, match="no sure gold links to select against"):
        select_extraction(weights, [frozenset()] * 3, **counts)
    with pytest.raises(ValueError, match="no sure gold links to select against"):
        select_extraction(weights, [(frozenset(), frozenset({(0, 0)}))] * 3, **counts)


def test_extraction_config_checks_dev_aer_and_numbers():
    np = pytest.importorskip("numpy")
    for bad in (math.nan, math.inf, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"ExtractionConfig.dev_aer must be in \[0, 1\]"):
            ExtractionConfig(dev_aer=bad)
    with pytest.raises(
        TypeError, match=r"ExtractionConfig.dev_aer must be a real number in \[0, 1\]"
    ):
        ExtractionConfig(dev_aer="0.1")
    with pytest.raises(TypeError, match=r"ExtractionConfig.dev_aer must be .*, got True \(bool\)"):
        ExtractionConfig(dev_aer=True)
    with pytest.raises(TypeError, match="ExtractionConfig.threshold must be a real number"):
        ExtractionConfig(threshold=True)
    with pytest.raises(ValueError, match="ExtractionConfig.threshold must be in"):
        ExtractionConfig(threshold=math.nan)
    config = ExtractionConfig(
        layers=(np.int64(1), -1), heads=[np.int32(0)], threshold=np.float32(0.25),
        dev_aer=np.float64(0.5),
    )  # fmt: skip
    assert config == ExtractionConfig((1, -1), (0,), threshold=0.25, dev_aer=0.5)
    assert all(type(v) is int for v in config.layers + config.heads)
    assert type(config.threshold) is float and type(config.dev_aer) is float
    assert ExtractionConfig.from_json(config.to_json()) == config
    with pytest.raises(TypeError, match=r"ExtractionConfig.layers\[0\] must be an int, got"):
        ExtractionConfig(layers=(np.bool_(True),))


def test_from_dict_names_bad_arguments():
    with pytest.raises(TypeError, match="from_dict: data must be a dict .* got NoneType"):
        ExtractionConfig.from_dict(None)
    with pytest.raises(TypeError, match="from_dict: data must be a dict .* got list"):
        ExtractionConfig.from_json("[1, 2]")
    with pytest.raises(ValueError, match="ExtractionConfig.layers must be None or a non-empty tuple of ints, got 3"):  # fmt: skip
        ExtractionConfig.from_dict({"layers": 3})
    with pytest.raises(ValueError, match="ExtractionConfig.heads must be None or a non-empty"):
        ExtractionConfig.from_dict({"heads": "01"})
    with pytest.raises(ValueError, match=r"ExtractionConfig.dev_aer must be in \[0, 1\], got nan"):
        ExtractionConfig.from_json('{"dev_aer": NaN}')
    assert ExtractionConfig.from_dict({"layers": [0, 1]}).layers == (0, 1)


def test_extract_alignment_checks_config_and_counts():
    w = torch.rand(2, 3, 5, 6).softmax(-1)
    for bad in (None, {"shift": "feed"}):
        for fn in (extract_alignment, alignment_scores):
            with pytest.raises(TypeError, match="config must be an ExtractionConfig .*from_dict"):
                fn(w, bad, 4, 4)
    with pytest.raises(TypeError, match="source_start must be a non-negative int, got 0.5"):
        extract_alignment(w, DEFAULT_EXTRACTION, 4, 4, source_start=0.5)
    with pytest.raises(ValueError, match="source_start must be a non-negative int, got -1"):
        extract_alignment(w, DEFAULT_EXTRACTION, 4, 4, source_start=-1)
    with pytest.raises(TypeError, match="n_target_words must be a non-negative int, got 2.9"):
        extract_alignment(w, DEFAULT_EXTRACTION, 4, 2.9)
    with pytest.raises(
        TypeError, match=r"n_source_words must be a non-negative int, got True \(bool\)"
    ):
        alignment_scores(w, DEFAULT_EXTRACTION, True, 4)
    with pytest.raises(ValueError, match="n_target_words must be a non-negative int, got -2"):
        extract_alignment(w, DEFAULT_EXTRACTION, 4, -2)
    np = pytest.importorskip("numpy")
    assert extract_alignment(
        w, DEFAULT_EXTRACTION, np.int64(4), np.int32(4), source_start=np.int64(1)
    ) == extract_alignment(w, DEFAULT_EXTRACTION, 4, 4, source_start=1)


def test_feed_reads_row_j_plus_1_which_is_predicts_row_for_the_next_word():
    """A hand-made map whose row t attends to source word c[t] only: "predict" links target word
    j to c[j], "feed" to c[j + 1]. The feed links of a map are its predict links one row down,
    so a model that looks at the source of the word it is about to write is one word off."""
    c = [2, 0, 3, 1, 4]  # the source word each of the T = 5 rows attends to
    w = torch.zeros(len(c), 5)  # (T, S): 4 target words + the row that predicts EOS
    w[torch.arange(len(c)), torch.tensor(c)] = 1.0
    predict = extract_alignment(w, ExtractionConfig(shift="predict", method="argmax"), 5, 4)
    feed = extract_alignment(w, ExtractionConfig(shift="feed", method="argmax"), 5, 4)
    assert predict == {(c[j], j) for j in range(4)}  # rows 0..3
    assert feed == {(c[j + 1], j) for j in range(4)}  # rows 1..4
    gen = torch.Generator().manual_seed(5)
    w = torch.rand(2, 3, 7, 6, generator=gen).softmax(-1)  # (layers, heads, T, S)
    for method in ("argmax", "bidirectional", "threshold"):
        config = ExtractionConfig(shift="feed", method=method)
        shifted = replace(config, shift="predict")
        assert extract_alignment(w, config, 6, 6) == extract_alignment(w[:, :, 1:], shifted, 6, 6)


def test_a_translators_row_j_plus_1_is_the_step_that_reads_target_word_j(tmp_path):
    """In `Translator.align_batch`'s maps, changing target word j leaves rows 0..j as they were
    and changes row j + 1: that row is computed with w_j as the decoder's input, the step
    shift="feed" is meant to read."""
    from crossattn.models import Translator
    from tests.conftest import write_tiny_translator

    source, target = "a b c d".split(), "w x y z".split()
    write_tiny_translator(tmp_path, source, target, seed=3)
    tr = Translator.load(tmp_path)
    j = 2
    changed = list(target)
    changed[j] = "w"
    before, after = (r.decoder_attention for r in tr.align_batch([source] * 2, [target, changed]))
    assert before.shape == (2, 2, len(target) + 1, len(source))  # (layers, heads, T + 1, S)
    torch.testing.assert_close(before[:, :, : j + 1], after[:, :, : j + 1], rtol=0, atol=1e-6)
    assert (before[:, :, j + 1] - after[:, :, j + 1]).abs().max() > 1e-4
