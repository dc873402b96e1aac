"""`crossattn export`: CTranslate2 and ONNX exports translate token for token as the model does.

The models are tiny: random ones written directly (pre-norm and post-norm, tied and untied
output), and one trained for a few seconds on a word-reversal task (marked slow), so that the
greedy outputs are real translations of varied length and not the drift of random weights.

Scores are sums of float32 log-probabilities computed by two implementations; they are compared
to ``STEP_TOL`` per produced token (measured differences stay under 2e-6 per token).
"""

from __future__ import annotations

import json
import random
import shutil
import sys

import pytest
import torch

from crossattn.cli import main
from crossattn.models import greedy_decode
from crossattn.training import WEIGHTS_FILE, load_model
from tests.conftest import write_tiny_translator

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("one_thread")]
ctranslate2 = pytest.importorskip("ctranslate2", reason="pip install 'crossattn[export]'")
ort = pytest.importorskip("onnxruntime", reason="pip install 'crossattn[export]'")

WORDS = [f"w{i}" for i in range(12)]
SOURCE = "le la chat chien noir blanc dort mange vite".split()
TARGET = "the cat dog black white sleeps eats fast".split()
STEP_TOL = 1e-5
MAX_LEN = 24


def _reversal_pairs(rng: random.Random, n: int):
    from crossattn.data.parallel import ParallelExample

    pairs = []
    for _ in range(n):
        source = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
        pairs.append(ParallelExample(tuple(source), tuple(w.upper() for w in reversed(source))))
    return pairs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model directory, held-out sources): a 2 + 2 layer pre-norm model that reverses words."""
    from crossattn.training import TrainOptions, train

    out = tmp_path_factory.mktemp("export") / "trained"
    rng = random.Random(0)
    opts = TrainOptions(
        data="", out=str(out), steps=200, d_model=32, heads=2, encoder_layers=2,
        decoder_layers=2, dim_ff=64, max_len=16, dev_size=20, eval_seconds=float("inf"),
        save_seconds=float("inf"), progress=False, batch_tokens=400, lr=1e-2,
    )  # fmt: skip
    train(opts, examples=_reversal_pairs(rng, 600))
    return out, [list(p.source) for p in _reversal_pairs(rng, 16)]


@pytest.fixture(scope="module", params=["pre-tied", "post-untied"])
def random_model(request, tmp_path_factory):
    """(model directory, sources): a random tiny model, pre-norm tied or post-norm untied."""
    out = tmp_path_factory.mktemp("export") / request.param
    out.mkdir()
    pre = request.param.startswith("pre")
    write_tiny_translator(out, SOURCE, TARGET, seed=3, norm_first=pre, max_len=MAX_LEN,
                          tie_embeddings=pre, decoder_layers=2, encoder_layers=2)  # fmt: skip
    rng = random.Random(1)
    return out, [[rng.choice(SOURCE) for _ in range(rng.randint(1, 7))] for _ in range(12)]


def _ours(directory, sources, max_len):
    """Greedy hypotheses of the model itself, as target words, with scores and finished flags."""
    model, source_vocab, target_vocab = load_model(directory)
    ids = torch.zeros(len(sources), max(map(len, sources)), dtype=torch.long)
    for r, words in enumerate(sources):
        ids[r, : len(words)] = torch.tensor(source_vocab.encode(words))
    hyps = greedy_decode(model, ids, ids != 0, max_len=max_len)
    return [(target_vocab.decode(h.tokens), h.score, h.finished, h) for h in hyps]


def _export(directory, fmt, out, *extra) -> None:
    assert main(["export", "--model", str(directory), "--format", fmt, "--out", str(out),
                 *extra]) == 0  # fmt: skip


def _check_ctranslate2(directory, sources, out, max_len):
    _export(directory, "ctranslate2", out)
    translator = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
    # Greedy as ours: an empty translation allowed, scores as plain sums, the same length limit.
    results = translator.translate_batch(
        sources, beam_size=1, min_decoding_length=0, length_penalty=0,
        max_decoding_length=max_len, return_scores=True,
    )  # fmt: skip
    ours = _ours(directory, sources, max_len)
    for (tokens, score, _, hyp), result in zip(ours, results):
        assert result.hypotheses[0] == tokens
        assert abs(result.scores[0] - score) <= STEP_TOL * (len(hyp.tokens) + 1)
    return ours


def _check_onnx(directory, sources, out, max_len, *extra):
    from crossattn.models.export_onnx_runner import OnnxTranslator

    _export(directory, "onnx", out, *extra)
    runner = OnnxTranslator(out, threads=1)
    ours = _ours(directory, sources, max_len)
    assert runner.translate(sources, max_len=max_len) == [o[0] for o in ours]
    width = max(map(len, sources))
    ids = [runner.source_vocab.encode(s) + [0] * (width - len(s)) for s in sources]
    mask = [[i != 0 for i in row] for row in ids]
    for hyp, (_, score, finished, mine) in zip(runner.greedy(ids, mask, max_len=max_len), ours):
        assert hyp.tokens == mine.tokens and hyp.finished == finished
        assert abs(hyp.score - score) <= STEP_TOL * (len(hyp.tokens) + 1)
    return ours


def test_ctranslate2_matches_random_models(random_model, tmp_path):
    directory, sources = random_model
    ours = _check_ctranslate2(directory, sources, tmp_path / "ct2", max_len=MAX_LEN - 2)
    assert len({tuple(o[0]) for o in ours}) > 1  # not one output for every input


def test_onnx_matches_random_models(random_model, tmp_path):
    directory, sources = random_model
    ours = _check_onnx(directory, sources, tmp_path / "onnx", max_len=MAX_LEN - 2)
    assert len({tuple(o[0]) for o in ours}) > 1


@pytest.mark.slow
def test_ctranslate2_matches_trained_model(trained, tmp_path):
    directory, sources = trained
    ours = _check_ctranslate2(directory, sources, tmp_path / "ct2", max_len=14)
    # A real translator: every output ends, and most are the reversed words.
    assert all(finished for _, _, finished, _ in ours)
    right = sum(o[0] == [w.upper() for w in reversed(s)] for o, s in zip(ours, sources))
    assert right >= len(sources) // 2


@pytest.mark.slow
def test_onnx_matches_trained_model(trained, tmp_path):
    directory, sources = trained
    ours = _check_onnx(directory, sources, tmp_path / "onnx", max_len=14)
    assert all(finished for _, _, finished, _ in ours)


@pytest.mark.slow
def test_onnx_dynamo_exporter_matches_trained_model(trained, tmp_path):
    """The graphs captured by torch.export (dynamo=True), converted to opset 17."""
    import onnx

    directory, sources = trained
    _check_onnx(directory, sources, tmp_path / "onnx", 14, "--dynamo")
    for name in ("encoder.onnx", "decoder_step.onnx"):
        opsets = {o.domain: o.version for o in onnx.load(tmp_path / "onnx" / name).opset_import}
        assert opsets[""] == 17


def test_ctranslate2_int8_export_loads(random_model, tmp_path):
    directory, sources = random_model
    _export(directory, "ctranslate2", tmp_path / "int8", "--quantization", "int8")
    config = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert config["decoder_start_token"] == "<s>" and config["layer_norm_epsilon"] == 1e-5
    # intra_threads: CTranslate2 sets the process's OpenMP thread count, torch's too.
    translator = ctranslate2.Translator(
        str(tmp_path / "int8"), compute_type="int8", intra_threads=1
    )
    out = translator.translate_batch(sources[:2], beam_size=1, max_decoding_length=5)
    assert all(len(r.hypotheses[0]) <= 5 for r in out)
    vocab = json.loads((tmp_path / "int8" / "target_vocabulary.json").read_text())
    assert vocab[:4] == ["<pad>", "<s>", "</s>", "<unk>"] and set(TARGET) <= set(vocab)


def test_onnx_graphs_match_the_model_step_by_step(random_model):
    """Encoder K/V against `prepare_contexts`; each step from an empty cache against `decode`."""
    from crossattn.models.export_onnx import onnx_graphs

    directory, _ = random_model
    model, _, _ = load_model(directory)
    encoder_graph, step_graph = onnx_graphs(model)
    encoder = ort.InferenceSession(encoder_graph, providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(step_graph, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(4, model.config.source_vocab_size, (3, 5), generator=gen)  # B 3, S 5
    ids[0, 3:] = 0
    ids[2, 1:] = 0
    mask = ids != 0
    keys, values = encoder.run(None, {"source_ids": ids.numpy(), "source_mask": mask.numpy()})
    with torch.no_grad():
        contexts = model.prepare_contexts(model.encode(ids, mask), mask)
    for i, ctx in enumerate(contexts):
        tol = 1e-5 * (1 + ctx.key.abs().max().item())
        assert (torch.from_numpy(keys[i]) - ctx.key).abs().max() <= tol
        assert (torch.from_numpy(values[i]) - ctx.value).abs().max() <= tol
    prefix = torch.ones(3, 1, dtype=torch.long)
    self_k = self_v = torch.zeros(keys.shape[:3] + (0,) + keys.shape[4:]).numpy()
    for t in range(4):
        log_probs, self_k, self_v = step.run(None, {
            "tokens": prefix[:, -1].numpy(), "self_keys": self_k, "self_values": self_v,
            "cross_keys": keys, "cross_values": values, "source_mask": mask.numpy(),
        })  # fmt: skip
        assert self_k.shape[3] == t + 1
        with torch.no_grad():
            logits = model(ids, mask, prefix).logits[:, -1]
        logits[:, :2] = float("-inf")  # <pad>, <s>
        ref = logits.log_softmax(-1)
        got = torch.from_numpy(log_probs)
        assert torch.equal(got.isinf(), ref.isinf())
        finite = ref.isfinite()
        assert (got - ref)[finite].abs().max() <= 1e-5 * (1 + ref[finite].abs().max())
        prefix = torch.cat([prefix, torch.randint(4, 8, (3, 1), generator=gen)], 1)


def test_onnx_check_refuses_a_model_the_exporter_misreads(random_model, tmp_path):
    """A model whose layers compute something else than its config says (one layer switched
    between pre-norm and post-norm) is refused, and an existing output is left as it was."""
    from crossattn.models.export_onnx import export_onnx

    directory, _ = random_model
    model, source_vocab, target_vocab = load_model(directory)
    for block in ("self_block", "cross_block", "ffn_block"):
        residual = getattr(model.decoder[0], block)
        residual.norm_first = not residual.norm_first
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "keep.txt").write_text("previous export")
    with pytest.raises(ValueError, match="differ from the model's"):
        export_onnx(model, source_vocab, target_vocab, tmp_path / "onnx", overwrite=True)
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == ["keep.txt"]  # left as it was
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]


# ------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export_small") / "model"
    out.mkdir()
    return write_tiny_translator(out, SOURCE, TARGET, d_model=8, decoder_layers=1, dim_ff=16,
                                 max_len=MAX_LEN)  # fmt: skip


def _error(capsys, *argv) -> str:
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crossattn export: error: argument --"), err
    return err


@pytest.mark.parametrize("fmt", ["ctranslate2", "onnx"])
def test_existing_out_is_refused_unless_overwrite(small_dir, tmp_path, capsys, fmt):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    err = _error(capsys, "--model", str(small_dir), "--format", fmt, "--out", str(out))
    assert "argument --out" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "old"
    _export(small_dir, fmt, out, "--overwrite")
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging directory left


def test_unknown_format_names_the_option(small_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", str(small_dir), "--format", "tflite", "--out",
              str(tmp_path / "o")])  # fmt: skip
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --format" in err and "tflite" in err and "ctranslate2" in err


@pytest.mark.parametrize("missing", ["model.safetensors", "config.json", "target_vocab.json"])
def test_model_dir_missing_a_file(small_dir, tmp_path, capsys, missing):
    broken = tmp_path / "broken"
    shutil.copytree(small_dir, broken)
    (broken / missing).unlink()
    err = _error(capsys, "--model", str(broken), "--format", "onnx", "--out", str(tmp_path / "o"))
    assert "argument --model" in err and missing in err
    assert not (tmp_path / "o").exists()


def test_corrupt_weights_name_the_model_option(small_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(small_dir, broken)
    (broken / WEIGHTS_FILE).write_bytes(b"junk")
    err = _error(capsys, "--model", str(broken), "--format", "ctranslate2", "--out",
                 str(tmp_path / "o"))  # fmt: skip
    assert "argument --model" in err and "cannot load" in err


@pytest.mark.parametrize(
    ("fmt", "package"), [("ctranslate2", "ctranslate2"), ("onnx", "onnxruntime"), ("onnx", "onnx")]
)
def test_missing_package_names_the_extra(small_dir, tmp_path, capsys, monkeypatch, fmt, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    err = _error(capsys, "--model", str(small_dir), "--format", fmt, "--out", str(tmp_path / "o"))
    assert "argument --format" in err and package in err and "crossattn[export]" in err


def test_missing_package_in_the_library(small_dir, tmp_path, monkeypatch):
    from crossattn.models.export_ctranslate2 import export_ctranslate2

    model, source_vocab, target_vocab = load_model(small_dir)
    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    with pytest.raises(ImportError, match=r"crossattn\[export\]"):
        export_ctranslate2(model, source_vocab, target_vocab, tmp_path / "o")


def test_out_inside_the_model_dir_and_other_misuse(small_dir, tmp_path, capsys):
    err = _error(capsys, "--model", str(small_dir), "--format", "onnx", "--out",
                 str(small_dir / "onnx"), "--overwrite")  # fmt: skip
    assert "model directory" in err
    err = _error(capsys, "--model", str(small_dir), "--format", "onnx", "--out",
                 str(small_dir.parent), "--overwrite")  # fmt: skip
    assert "model directory" in err and (small_dir / WEIGHTS_FILE).is_file()
    err = _error(capsys, "--model", str(small_dir), "--format", "onnx", "--out",
                 str(tmp_path / "o"), "--quantization", "int8")  # fmt: skip
    assert "argument --quantization" in err
    err = _error(capsys, "--model", str(small_dir), "--format", "ctranslate2", "--out",
                 str(tmp_path / "o"), "--dynamo")  # fmt: skip
    assert "argument --dynamo" in err
    (tmp_path / "file").write_text("x")
    err = _error(capsys, "--model", str(small_dir), "--format", "onnx", "--out",
                 str(tmp_path / "file"), "--overwrite")  # fmt: skip
    assert "argument --out" in err and "file" in err
    err = _error(capsys, "--model", str(small_dir), "--format", "ctranslate2", "--out",
                 str(tmp_path / "file" / "below"))  # fmt: skip
    assert "argument --out" in err and "cannot write" in err


def test_library_refuses_bad_arguments(small_dir, tmp_path):
    from crossattn.commands import export as command
    from crossattn.models.export_ctranslate2 import QUANTIZATIONS, export_ctranslate2
    from crossattn.models.export_onnx import export_onnx

    assert command.QUANTIZATIONS == QUANTIZATIONS
    model, source_vocab, target_vocab = load_model(small_dir)
    with pytest.raises(ValueError, match="quantization must be one of 'int8', .*; got 'q3'"):
        export_ctranslate2(model, source_vocab, target_vocab, tmp_path / "o", quantization="q3")
    with pytest.raises(ValueError, match="target_vocab has"):
        export_onnx(model, source_vocab, source_vocab, tmp_path / "o")
    with pytest.raises(TypeError, match="Seq2SeqTransformer"):
        export_ctranslate2(torch.nn.Linear(2, 2), source_vocab, target_vocab, tmp_path / "o")
    (tmp_path / "o").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(model, source_vocab, target_vocab, tmp_path / "o")
