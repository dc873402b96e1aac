"""Compute types: `quantize` and `Int8Linear`, decoding in every compute type, agreement with
float32 on a trained model, `Translator.load(compute_type=...)`, ``--compute-type`` and errors."""

from __future__ import annotations

import copy
import io
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch

from crossattn.backends import Int8Tensor
from crossattn.cli import main
from crossattn.models import (
    COMPUTE_TYPES,
    Seq2SeqConfig,
    Seq2SeqTransformer,
    Translator,
    beam_search,
    greedy_decode,
    quantize,
)
from crossattn.models import int8_linear as int8_linear_module
from crossattn.models.int8_linear import KERNELS, Int8Linear, int8_kernel_reason
from crossattn.models.quantize import Int8ContextAttention, prepared_nbytes
from tests.conftest import train_word_task, write_tiny_translator

EPS32 = torch.finfo(torch.float32).eps
RUNNABLE_KERNELS = [k for k in KERNELS if int8_kernel_reason(k) is None]
MAX_NEW = 12  # tokens decoded per sentence (the task's targets have 2 to 8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These shapes are tiny: one thread runs them faster than two, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- a trained model
def _task(g: torch.Generator, rows: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A word-for-word task: target token t = (source token % 9) + 4."""
    src = torch.randint(4, 30, (rows, n), generator=g)
    return src, src % 9 + 4


@pytest.fixture(scope="module")
def trained() -> Seq2SeqTransformer:
    """A small model trained until it translates the task, so that its decisions are learned."""
    torch.manual_seed(0)
    config = Seq2SeqConfig(30, 14, d_model=32, heads=2, encoder_layers=1, decoder_layers=2,
                           dim_ff=64, dropout=0.0, max_len=24)  # fmt: skip
    model = Seq2SeqTransformer(config)
    return train_word_task(model, _task, steps=300, lengths=(2, 8))  # about 10 s


def _batch(seed: int, rows: int = 12, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    src, _ = _task(g, rows, n)
    mask = torch.ones_like(src, dtype=torch.bool)
    lengths = torch.randint(2, n + 1, (rows,), generator=g)
    mask &= torch.arange(n)[None, :] < lengths[:, None]
    return src.masked_fill(~mask, 0), mask


@pytest.fixture(scope="module", params=COMPUTE_TYPES)
def converted(request, trained):
    return request.param, quantize(trained, request.param)


# ------------------------------------------------------------------------------------ decoding
@pytest.mark.slow
@pytest.mark.parametrize("search", ["greedy", "beam"])
@pytest.mark.parametrize("attention", [False, True])
def test_every_compute_type_decodes(converted, search, attention):
    compute_type, model = converted
    src, mask = _batch(1)
    if search == "greedy":
        hyps = greedy_decode(model, src, mask, return_attention=attention)
    else:
        hyps = beam_search(model, src, mask, beam_size=3, return_attention=attention)
    assert len(hyps) == src.shape[0]
    lengths = mask.sum(1).tolist()
    for h, n in zip(hyps, lengths):
        assert h.tokens and all(4 <= t < 14 for t in h.tokens)
        assert h.score < 0.0
        if not attention:
            assert h.attention is None
            continue
        steps = len(h.tokens) + int(h.finished)
        assert h.attention.shape == (2, 2, steps, n)
        low = torch.finfo(h.attention.dtype).eps * n * 4
        assert torch.allclose(h.attention.float().sum(-1), torch.ones(2, 2, steps), atol=low)


@pytest.mark.slow
def test_agreement_with_float32_on_the_trained_model(converted, trained):
    """Greedy tokens equal float32's wherever float32 is not near a tie.

    The tolerance is derived, not guessed: the largest log-probability error of the compute
    type (teacher-forced on float32's own output) is measured on one batch; on another batch,
    every greedy step whose float32 margin (top-1 minus top-2 log-probability) exceeds twice
    that error, with a 2x allowance for the batch change, must pick float32's token. Most tokens
    of a trained model are far from a tie, so this also checks that most tokens agree.
    """
    compute_type, model = converted
    calib_err = _max_logprob_error(trained, model, *_batch(2))
    src, mask = _batch(3)
    ref = greedy_decode(trained, src, mask, max_len=MAX_NEW)
    got = greedy_decode(model, src, mask, max_len=MAX_NEW)
    margins = _margins(trained, src, mask, ref)
    need = 2 * 2 * calib_err
    agree = total = 0
    for r, g, m in zip(ref, got, margins):
        for t, (a, b) in enumerate(zip(r.tokens, g.tokens)):
            if r.tokens[:t] != g.tokens[:t]:
                break  # after a divergence the prefixes differ: no longer comparable
            total += 1
            agree += a == b
            if m[t] > need:
                assert a == b, f"{compute_type}: token {t} differs at margin {m[t]:.3f}"
    confident = sum(float(x > need) for m in margins for x in m)
    all_tokens = sum(len(r.tokens) for r in ref)
    assert confident >= 0.8 * all_tokens, "most float32 tokens are far from a tie"
    assert agree >= 0.8 * all_tokens


def _teacher_logprobs(model, src, mask, hyps):
    n = max(len(h.tokens) for h in hyps)
    tgt = torch.full((len(hyps), n), 4, dtype=torch.long)
    for i, h in enumerate(hyps):
        tgt[i, : len(h.tokens)] = torch.tensor(h.tokens, dtype=torch.long)
    target_in = torch.cat([torch.full((len(hyps), 1), model.config.bos_id), tgt], 1)
    with torch.no_grad():
        logits = model(src, mask, target_in).logits.float()
    logits[..., [model.config.pad_id, model.config.bos_id]] = float("-inf")
    return torch.log_softmax(logits, -1)  # (B, n + 1, V)


def _max_logprob_error(ref_model, model, src, mask) -> float:
    hyps = greedy_decode(ref_model, src, mask, max_len=MAX_NEW)
    a = _teacher_logprobs(ref_model, src, mask, hyps)
    b = _teacher_logprobs(model, src, mask, hyps)
    finite = torch.isfinite(a)
    err = 0.0
    for i, h in enumerate(hyps):
        rows = slice(0, len(h.tokens) + 1)
        err = max(err, (a[i, rows] - b[i, rows])[finite[i, rows]].abs().max().item())
    return err


def _margins(model, src, mask, hyps) -> list[list[float]]:
    logp = _teacher_logprobs(model, src, mask, hyps)
    top2 = logp.topk(2, dim=-1).values  # (B, n + 1, 2)
    gap = (top2[..., 0] - top2[..., 1]).tolist()
    return [gap[i][: len(h.tokens)] for i, h in enumerate(hyps)]


# --------------------------------------------------------------------------------- int8 memory
@pytest.mark.slow
def test_int8_stores_the_cross_attention_memory_as_int8(trained):
    model = quantize(trained, "int8")
    src, mask = _batch(4)
    with torch.no_grad():
        memory = model.encode(src, mask)
        contexts = model.prepare_contexts(memory, mask)
        float_contexts = trained.prepare_contexts(trained.encode(src, mask), mask)
    for layer, c in zip(model.decoder, contexts):
        assert isinstance(layer.cross_attn_target_to_source, Int8ContextAttention)
        assert layer.cross_attn_target_to_source.backend == "int8"
        assert isinstance(c.key, Int8Tensor) and isinstance(c.value, Int8Tensor)
        b, h, s, e = c.key.shape
        assert c.key.scales.shape == (b, h, s, 1)  # one scale per row, head and token
    # a raw memory given to a call is projected through the same int8 storage
    attn = model.decoder[0].cross_attn_target_to_source
    raw = attn.context_for(memory, context_mask=mask, batch=memory.shape[0])
    assert isinstance(raw.key, Int8Tensor) and isinstance(raw.value, Int8Tensor)
    # the self-attention keeps float keys and values; the encoder stays float too
    assert not isinstance(model.decoder[0].self_attn, Int8ContextAttention)
    e = trained.config.d_model // trained.config.heads
    ratio = prepared_nbytes(contexts) / prepared_nbytes(float_contexts)
    assert ratio == pytest.approx((e + 4) / (4 * e))  # int8 values + a float32 scale per row


@pytest.mark.slow
def test_quantize_copies_unless_inplace(trained):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    model = quantize(trained, "int8")
    assert model is not trained
    assert all(type(m) is not Int8Linear for m in trained.modules())
    assert all(torch.equal(v, before[k]) for k, v in trained.state_dict().items())
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) > 0
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    twin = copy.deepcopy(trained)
    assert quantize(twin, "bfloat16", inplace=True) is twin
    assert twin.output.weight is twin.target_embed.weight  # tied weights stay tied
    assert {p.dtype for p in twin.parameters()} == {torch.bfloat16}


@pytest.mark.slow
def test_int8_bfloat16_keeps_int8_scales_in_float32(trained):
    model = quantize(trained, "int8_bfloat16")
    for m in model.modules():
        if isinstance(m, Int8Linear):
            assert m.dtype == torch.bfloat16 and m.weight.dtype == torch.bfloat16
            assert m.weight_scale.dtype == torch.float32
    assert model.target_embed.weight.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------- Int8Linear
@pytest.mark.parametrize("kernel", RUNNABLE_KERNELS)
@pytest.mark.parametrize("shape", [(5, 7, 24), (1, 64), (3, 33)])
@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_matches_its_quantised_arithmetic_in_float64(kernel, shape, bias):
    """The kernel's result equals the float64 product of its own quantised operands, up to the
    float32 rounding of the scales and bias (a few ulps of each output's magnitude)."""
    g = torch.Generator().manual_seed(sum(shape))
    *lead, k = shape
    lin = torch.nn.Linear(k, 19, bias=bias)
    x = torch.randn(*lead, k, generator=g) * 3
    layer = Int8Linear.from_float(lin, kernel=kernel)
    got = layer(x)
    rows = x.reshape(-1, k)
    if kernel == "int_mm":
        sx = rows.abs().amax(1, keepdim=True).clamp_min(1e-30).div(127)
        xd = torch.round(rows / sx).double() * sx.double()
    else:
        xd = torch.quantize_per_tensor_dynamic(rows, torch.quint8, False).dequantize().double()
    wd = layer.weight_int8.double() * layer.weight_scale.double()[:, None]
    ref = xd @ wd.T + (0.0 if lin.bias is None else lin.bias.double())
    tol = 8 * EPS32 * ((xd.abs() @ wd.abs().T).max().item() + 1.0)
    assert got.shape == (*lead, 19) and got.dtype == torch.float32
    assert (got.reshape(-1, 19).double() - ref).abs().max().item() <= tol
    # and the quantisation error against the float layer is that of int8 operands
    with torch.no_grad():
        assert (got - lin(x)).abs().max() <= 0.05 * lin(x).abs().max()


@pytest.mark.parametrize("kernel", RUNNABLE_KERNELS)
def test_int8_linear_in_bfloat16_and_fused(kernel):
    g = torch.Generator().manual_seed(0)
    parts = [torch.nn.Linear(16, n) for n in (8, 8, 4)]
    layers = [Int8Linear.from_float(p, torch.bfloat16, kernel) for p in parts]
    x = torch.randn(6, 16, generator=g).bfloat16()
    out = layers[0](x)
    assert out.dtype == torch.bfloat16 and layers[0].weight.dtype == torch.bfloat16
    fused = Int8Linear.concat(layers)(x.float())
    separate = torch.cat([m(x.float()) for m in layers], -1)
    assert fused.shape == (6, 20)
    if kernel == "int_mm":  # per-row activation scales: the fused call is the same arithmetic
        assert torch.equal(fused, separate)
    copied = copy.deepcopy(layers[0])
    assert torch.equal(copied(x), out)
    assert layers[0](torch.randn(0, 16).bfloat16()).shape == (0, 8)


# -------------------------------------------------------------------------- Translator and CLI
WORDS_SRC = "le la un une chat chien noir blanc dort mange sur tapis".split()
WORDS_TGT = "the a cat dog black white sleeps eats on mat".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_translator(tmp_path_factory.mktemp("model"), WORDS_SRC, WORDS_TGT,
                                 d_model=32, max_len=16)  # fmt: skip


@pytest.mark.parametrize("compute_type", COMPUTE_TYPES)
def test_translator_load_with_a_compute_type(model_dir, compute_type):
    tr = Translator.load(model_dir, compute_type=compute_type)
    int8 = any(isinstance(m, Int8Linear) for m in tr.model.modules())
    assert int8 == compute_type.startswith("int8")
    r = tr.translate("le chat noir dort", beam=2)
    assert r.weights.dtype == torch.float32 and r.weights.shape[-1] == 4
    assert tr.align("le chat", "the cat").weights.shape == (2, 2, 2, 2)


def test_cli_translate_and_align_take_compute_type(model_dir, tmp_path):
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["translate", "--model", str(model_dir), "--compute-type", "int8", "--beam",
                   "1", "le chat dort"])  # fmt: skip
    assert rc == 0 and out.getvalue().strip()
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("le chat ||| the cat\nun chien noir ||| a black dog\n")
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["align", "--model", str(model_dir), "--data", str(pairs), "--compute-type",
                   "int8_bfloat16"])  # fmt: skip
    assert rc == 0 and len(out.getvalue().splitlines()) == 2


# -------------------------------------------------------------------------------------- errors
@pytest.mark.slow
def test_unknown_compute_type_names_the_option_and_lists_the_valid_ones(trained, model_dir):
    valid = "'float32', 'bfloat16', 'int8', 'int8_bfloat16'"
    with pytest.raises(ValueError, match=f"compute_type must be one of {valid}; got 'int4'"):
        quantize(trained, "int4")
    with pytest.raises(TypeError, match="compute_type must be a string"):
        quantize(trained, torch.int8)
    with pytest.raises(ValueError, match="compute_type must be one of"):
        Translator.load(model_dir, compute_type="float16")
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(["translate", "--model", str(model_dir), "--compute-type", "int4", "x"])
    assert exit_.value.code == 2
    assert "argument --compute-type: invalid choice: 'int4'" in err.getvalue()
    assert "float32" in err.getvalue() and "int8_bfloat16" in err.getvalue()


@pytest.mark.slow
def test_int8_without_a_kernel_is_a_clear_error(trained, model_dir, monkeypatch):
    def no_kernel(kernel):
        return f"no {kernel} in this build"

    monkeypatch.setattr(int8_linear_module, "int8_kernel_reason", no_kernel)
    for compute_type in ("int8", "int8_bfloat16"):
        with pytest.raises(RuntimeError, match=r"compute_type int8 needs an int8 matmul kernel.*"
                           r"fbgemm: no fbgemm in this build.*use compute_type 'bfloat16'"):  # fmt: skip
            quantize(trained, compute_type)
    assert quantize(trained, "bfloat16") is not None  # the float types still run
    err = io.StringIO()
    with redirect_stderr(err):
        rc = main(["translate", "--model", str(model_dir), "--compute-type", "int8", "x"])
    assert rc == 2
    assert "argument --compute-type: 'int8' cannot run here" in err.getvalue()


@pytest.mark.slow
def test_quantize_refuses_a_model_already_converted(trained):
    model = quantize(trained, "int8")
    with pytest.raises(ValueError, match="holds Int8Linear layers; quantize the float32 model"):
        quantize(model, "int8")
    with pytest.raises(ValueError, match=r"has \['torch.bfloat16'\] parameters"):
        quantize(quantize(trained, "bfloat16"), "int8")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        quantize("model", "int8")
