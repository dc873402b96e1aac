"""The argument rules of `crossattn._checks`: one meaning for each, whatever the caller."""

from __future__ import annotations

import functools
import json
import os
import tempfile

import numpy as np
import pytest
import torch

import crossattn
from crossattn import _checks
from crossattn.capture import AttentionRecorder
from crossattn.data.toy_translation import generate_corpus, language_rules
from crossattn.data.vqa import read_vqa_jsonl
from crossattn.grounding import pointing_game
from crossattn.viz._record import as_record
from crossattn.viz.html import payload

INTS = [
    7,
    np.int64(7),
    np.int32(7),
    np.uint8(7),
    torch.tensor(7),
    torch.tensor(7, dtype=torch.int16),
]
NOT_INTS = [
    True,
    False,
    np.bool_(True),
    torch.tensor(True),
    7.0,
    np.float32(7),
    torch.tensor(7.0),
    torch.tensor([7]),
    np.array([7]),
    "7",
    None,
]


@pytest.mark.parametrize("value", INTS, ids=repr)
def test_integers_of_every_kind_are_accepted_as_int(value):
    for rule in (_checks.positive_int, _checks.nonnegative_int):
        got = rule(value, "n")
        assert type(got) is int and got == 7
    assert _checks.positive_ints(a=value, b=3) == (7, 3)
    assert _checks.nonnegative_ints(a=value) == (7,)


@pytest.mark.parametrize("value", NOT_INTS, ids=repr)
def test_bools_floats_and_others_are_refused_with_a_type_error(value):
    for rule in (_checks.positive_int, _checks.nonnegative_int):
        with pytest.raises(TypeError, match="^heads must be a (positive|non-negative) int, got "):
            rule(value, "heads")
    # the same error is a ValueError too, for callers that caught ValueError before
    with pytest.raises(ValueError, match="heads"):
        _checks.positive_ints(dim=4, heads=value)


def test_the_error_names_what_was_received():
    with pytest.raises(TypeError, match=r"got True \(bool\)"):
        _checks.positive_int(True, "dim")
    with pytest.raises(TypeError, match=r"got 2\.5$"):
        _checks.positive_int(2.5, "dim")
    with pytest.raises(ValueError, match="dim must be a positive int, got 0$"):
        _checks.positive_int(0, "dim")
    with pytest.raises(ValueError, match="depth must be a non-negative int, got -1$"):
        _checks.nonnegative_int(-1, "depth")
    with pytest.raises(ValueError, match=r"n must be an int >= 5, got np.int64\(4\)|got 4 "):
        _checks.integer(np.int64(4), "n", minimum=5)
    assert _checks.nonnegative_int(0, "depth") == 0


def test_positive_ints_names_the_first_bad_argument():
    with pytest.raises(ValueError, match="^b must be a positive int, got 0$"):
        _checks.positive_ints(a=1, b=0, c=-1)


@pytest.mark.parametrize("value", [0, 0.0, 0.5, np.float32(0.25), torch.tensor(0.1), 0.999])
def test_probability_accepts_zero_to_one_open(value):
    got = _checks.probability(value, "dropout")
    assert type(got) is float and got == pytest.approx(float(value))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (1.0, ValueError),
        (-0.1, ValueError),
        (float("nan"), ValueError),
        (True, TypeError),
        ("0.1", TypeError),
        (None, TypeError),
        (torch.tensor([0.1]), TypeError),
    ],
    ids=repr,
)
def test_probability_refuses_out_of_range_and_non_reals(value, error):
    expected = "must be in" if error is ValueError else "must be a real number in"
    with pytest.raises(error, match=rf"^dropout {expected} \[0, 1\), got "):
        _checks.probability(value, "dropout")


def test_finite_real():
    assert _checks.finite_real(np.float64(-2.5), "scale") == -2.5
    assert _checks.finite_real(3, "scale") == 3.0
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="scale must be a finite real number, got (nan|inf)$"):
            _checks.finite_real(bad, "scale")
    with pytest.raises(TypeError, match="scale must be a finite real number, got False"):
        _checks.finite_real(False, "scale")
    assert _checks.real(1.0, "p", low=0.0, high=1.0, high_open=False) == 1.0


def test_positive_real():
    assert _checks.positive_real(np.float32(0.5), "eps") == 0.5
    assert _checks.positive_real(torch.tensor(2), "eps") == 2.0
    for bad in (0, -1e-9, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="^eps must be a positive finite real number, got "):
            _checks.positive_real(bad, "eps")
    for bad in (True, "1", None):
        with pytest.raises(TypeError, match="^eps must be a positive finite real number, got "):
            _checks.positive_real(bad, "eps")


def test_unit_real_includes_both_ends():
    assert [_checks.unit_real(v, "alpha") for v in (0, 1, np.float64(0.5))] == [0.0, 1.0, 0.5]
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError, match=r"^alpha must be in \[0, 1\], got "):
            _checks.unit_real(bad, "alpha")
    with pytest.raises(TypeError, match=r"^alpha must be a real number in \[0, 1\], got True"):
        _checks.unit_real(True, "alpha")


def test_choice():
    assert _checks.choice("two", "mode", ("two", "shared")) == "two"
    with pytest.raises(ValueError, match="mode must be one of 'two', 'shared'; got 'three'"):
        _checks.choice("three", "mode", ("two", "shared"))
    with pytest.raises(TypeError, match="mode must be a string, one of 'two', 'shared'; got 2"):
        _checks.choice(2, "mode", ("two", "shared"))


def test_input_file(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("x")
    assert _checks.input_file(path, "--src") == str(path)
    with pytest.raises(ValueError, match="--src: no such file: .*missing"):
        _checks.input_file(tmp_path / "missing", "--src")
    with pytest.raises(ValueError, match="--src must be a file, got a directory"):
        _checks.input_file(tmp_path, "--src")
    with pytest.raises(TypeError, match="--src must be a path"):
        _checks.input_file(3, "--src")
    monkeypatch.setattr(_checks.os, "access", lambda *args: False)  # root reads every file
    with pytest.raises(ValueError, match="cannot read"):
        _checks.input_file(path, "--src")


def test_tensor_rank_and_dtype():
    t = torch.zeros(2, 3)
    assert _checks.tensor(t, "x", rank=2, legend="(B, S)", floating=True) is t
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor \(B, S\), got list"):
        _checks.tensor([1], "x", rank=2, legend="(B, S)")
    with pytest.raises(ValueError, match=r"x must be 2-D \(B, S\), got shape \(2, 3, 1\)"):
        _checks.tensor(t[..., None], "x", rank=2, legend="(B, S)")
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got dtype torch.int64"):
        _checks.tensor(t.long(), "x", floating=True)
    with pytest.raises(TypeError, match="x must have dtype torch.bool, got torch.float32"):
        _checks.tensor(t, "x", dtype=torch.bool)


def test_token_mask():
    like = torch.zeros(2, 5, 4)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert _checks.token_mask("m", None, (2, 5), "(B, S)") is None
    assert _checks.token_mask("m", mask, (2, 5), "(B, S)", like=like) is mask
    with pytest.raises(TypeError, match=r"m must be a bool tensor \(B, S\), True = valid"):
        _checks.token_mask("m", mask.float(), (2, 5), "(B, S)")
    with pytest.raises(ValueError, match=r"m must have shape \(B, S\) = \(2, 5\), got \(2, 4\)"):
        _checks.token_mask("m", mask[:, :4], (2, 5), "(B, S)")
    with pytest.raises(ValueError, match="m is on meta but the context is on cpu"):
        _checks.token_mask("m", mask.to("meta"), (2, 5), "(B, S)", like, "the context is")


def test_integer_within_bounds():
    assert _checks.integer(np.int64(3), "k", minimum=1, maximum=3) == 3
    with pytest.raises(ValueError, match=r"^k must be an int in 1\.\.3, got 4$"):
        _checks.integer(4, "k", minimum=1, maximum=3)
    with pytest.raises(ValueError, match=r"^k must be an int <= 3, got 4$"):
        _checks.integer(4, "k", maximum=3)
    with pytest.raises(TypeError, match=r"^k must be an int in 1\.\.3, got 2\.0$"):
        _checks.integer(2.0, "k", minimum=1, maximum=3)


def test_nonnegative_reals_and_an_infinite_upper_end():
    assert _checks.nonnegative_real(np.float32(0), "decay") == 0.0
    with pytest.raises(ValueError, match=r"^decay must be in \[0, inf\), got -0.1$"):
        _checks.nonnegative_real(-0.1, "decay")
    assert _checks.real(float("inf"), "every", low=0.0, infinite=True) == float("inf")
    for bad in (float("nan"), -1.0, float("-inf")):
        with pytest.raises(ValueError, match=r"^every must be in \[0, inf\], got "):
            _checks.real(bad, "every", low=0.0, infinite=True)
    assert _checks.real(1, "ratio", low=0.0, high=1.0, high_open=False) == 1.0


@pytest.mark.parametrize("value", [True, False, np.bool_(True), torch.tensor(False)], ids=repr)
def test_boolean_takes_bools_of_every_kind_as_bool(value):
    got = _checks.boolean(value, "flag")
    assert type(got) is bool and got == bool(value)


@pytest.mark.parametrize("value", [1, 0, "yes", None, torch.tensor([True])], ids=repr)
def test_boolean_refuses_everything_else(value):
    with pytest.raises(TypeError, match="^flag must be a bool, got "):
        _checks.boolean(value, "flag")


def test_path_and_output_paths(tmp_path):
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    assert _checks.path(tmp_path / "missing", "out") == str(tmp_path / "missing")
    with pytest.raises(TypeError, match=r"^out must be a path \(str or os.PathLike\), got None"):
        _checks.path(None, "out")
    assert _checks.output_dir(tmp_path / "new" / "deeper", "--out") == str(tmp_path / "new/deeper")
    assert _checks.output_dir(tmp_path, "--out") == str(tmp_path)
    with pytest.raises(ValueError, match="^--out: '.*a.txt' is an existing file; expected a dir"):
        _checks.output_dir(a_file, "--out")
    with pytest.raises(ValueError, match="--out: cannot make the directory .* is a file"):
        _checks.output_dir(a_file / "model", "--out")
    assert _checks.output_file(a_file, "-o") == str(a_file)
    assert _checks.output_file(tmp_path / "new.txt", "-o") == str(tmp_path / "new.txt")
    with pytest.raises(ValueError, match="^-o: '.*' is a directory; expected a file path"):
        _checks.output_file(tmp_path, "-o")
    with pytest.raises(ValueError, match="the directory '.*missing' does not exist"):
        _checks.output_file(tmp_path / "missing" / "x.txt", "-o")
    with pytest.raises(ValueError, match="the directory '.*a.txt' is not a directory"):
        _checks.output_file(a_file / "x.txt", "-o")


# --- the configs and options of models and training follow the one rule ---------------------


def _configs_and_options():
    from crossattn.models import Seq2SeqConfig
    from crossattn.models.kv_cache import KVCache
    from crossattn.models.vqa import VQAConfig
    from crossattn.training import TrainOptions

    return [
        ("Seq2SeqConfig", lambda n: Seq2SeqConfig(10, 10, d_model=8, heads=2, dim_ff=n),
         lambda made: made.dim_ff),
        ("VQAConfig", lambda n: VQAConfig(20, n, heads=n), lambda made: (made.n_answers, made.heads)),
        ("TrainOptions", lambda n: TrainOptions(data="d", out="o", steps=n, heads=n),
         lambda made: (made.steps, made.heads)),
        ("KVCache", lambda n: KVCache(n, 2, 3, n), lambda made: (made.rows, made.capacity)),
    ]  # fmt: skip


@pytest.mark.parametrize("kind", [np.int64(4), torch.tensor(4)], ids=["np.int64", "torch-0d"])
def test_configs_and_options_store_numpy_and_torch_ints_as_plain_ints(kind):
    for name, make, read in _configs_and_options():
        got, plain = read(make(kind)), read(make(4))
        assert got == plain, name
        for value in got if isinstance(got, tuple) else (got,):
            assert type(value) is int, (name, type(value))


def test_configs_and_options_refuse_bools():
    for _, make, _ in _configs_and_options():
        with pytest.raises(TypeError, match=r"must be a positive int, got True \(bool\)"):
            make(True)


# --- every public entry point of the layers, functional and masks follows the one rule ------

SMALL = {"heads": 2, "dim_head": 4}
ENTRY_POINTS = [
    ("GatedFusion", lambda n: crossattn.GatedFusion(n)),
    ("FiLM", lambda n: crossattn.FiLM(n, 3)),
    ("Bidirectional", lambda n: crossattn.BidirectionalCrossAttention(n, 3, heads=n, dim_head=2)),
    ("Bidirectional-out_dim", lambda n: crossattn.BidirectionalCrossAttention(4, 3, out_dim=n)),
    ("Gated", lambda n: crossattn.GatedCrossAttentionBlock(n, 3, heads=2, dim_head=n, ff_mult=n)),
    ("PerceiverEncoder", lambda n: crossattn.PerceiverEncoder(
        n, num_latents=n, latent_dim=8, depth=n, input_chunk_size=n, **SMALL)),
    ("PerceiverDecoder", lambda n: crossattn.PerceiverDecoder(n, 8, out_dim=n, ff_mult=n)),
    ("PerceiverIO", lambda n: crossattn.PerceiverIO(
        4, num_latents=2, latent_dim=8, depth=1, query_dim=6, num_outputs=n, **SMALL)),
    ("Retrieval", lambda n: crossattn.RetrievalCrossAttention(n, 3, chunk_size=n, **SMALL)),
    ("SelfDoc", lambda n: crossattn.SelfDocAttention(n, 3, heads=n, dim_head=2)),
    ("Encoder", lambda n: crossattn.TransformerEncoderLayer(n, heads=n, dim_ff=n)),
    ("Decoder", lambda n: crossattn.TransformerDecoderLayer(n, n, heads=n, dim_ff=n)),
    ("CrossAttention", lambda n: crossattn.CrossAttention(
        n, n, n, heads=n, dim_head=n, kv_heads=n, out_dim=n)),
    ("Hierarchical", lambda n: crossattn.HierarchicalCrossAttention(
        4, heads=2, dim_head=2, block_size=n, top_k=n, query_block_size=n)),
    ("TwoWayBlock", lambda n: crossattn.TwoWayAttentionBlock(
        n, n, mlp_dim=n, attention_downsample_rate=1)),
    ("TwoWay", lambda n: crossattn.TwoWayTransformer(
        n, n, n, n, attention_downsample_rate=1)),
    ("causal_mask", lambda n: crossattn.causal_mask(n, n)),
    ("lengths_to_key_mask", lambda n: crossattn.lengths_to_key_mask(torch.tensor([1, 2]), n)),
]  # fmt: skip
INT_KINDS = [np.int64(4), np.int32(4), torch.tensor(4), torch.tensor(4, dtype=torch.int32)]


def _signature(made):
    """What an entry point built: the shapes of a module's state, or a tensor's values."""
    if isinstance(made, torch.Tensor):
        return made.tolist()
    return {k: tuple(v.shape) for k, v in made.state_dict().items()}


@pytest.mark.parametrize("kind", INT_KINDS, ids=lambda v: f"{type(v).__name__}-{v.dtype}")
@pytest.mark.parametrize(("name", "make"), ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
def test_entry_points_take_numpy_and_torch_ints_as_ints(name, make, kind):
    assert _signature(make(kind)) == _signature(make(4))


@pytest.mark.parametrize("bad", [True, 4.0], ids=repr)
@pytest.mark.parametrize(("name", "make"), ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
def test_entry_points_refuse_bools_and_floats(name, make, bad):
    with pytest.raises(TypeError, match=rf"must be a (positive|non-negative) int, got {bad}"):
        make(bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1", None], ids=repr)
def test_gated_fusion_bias_init_is_a_finite_real(bad):
    with pytest.raises(ValueError, match="bias_init must be a finite real number, got "):
        crossattn.GatedFusion(4, bias_init=bad)
    assert crossattn.GatedFusion(4, bias_init=np.float32(-4)).to_gate.bias.eq(-4).all()


def test_layers_store_the_checked_ints_not_the_arguments():
    sizes = {"block_size": np.int64(3), "top_k": torch.tensor(2), "query_block_size": np.int32(5)}
    layer = crossattn.HierarchicalCrossAttention(4, heads=2, dim_head=2, **sizes)
    assert [type(getattr(layer, k)) for k in sizes] == [int, int, int]
    two_way = crossattn.TwoWayTransformer(np.int64(1), np.int64(4), torch.tensor(2), np.int16(8))
    stored = (two_way.depth, two_way.embedding_dim, two_way.num_heads, two_way.mlp_dim)
    assert [type(v) for v in stored] == [int] * 4 and stored == (1, 4, 2, 8)
    attn = crossattn.CrossAttention(np.int64(4), dropout=np.float32(0.5), norm_eps=np.int64(1))
    assert type(attn.query_dim) is int and type(attn.dropout) is float


def test_positive_int_pair():
    assert _checks.positive_int_pair([np.int64(3), torch.tensor(4)], "size") == (3, 4)
    for bad, error in [
        ((3,), TypeError),
        ((3, True), TypeError),
        ((3, 0), ValueError),
        (3, TypeError),
    ]:
        with pytest.raises(error, match=r"^size must be \(H, W\): two positive ints, got "):
            _checks.positive_int_pair(bad, "size")


# --- the outer rings (capture, integrations, align, data, viz) follow the same rule ----------
# Each entry: (name, make(n) -> what it keeps of n, the argument its error names).


@functools.cache
def _vqa_file() -> str:
    """A one-line VQA JSONL file (and its 8 x 6 image) in a temporary folder."""
    from PIL import Image

    folder = tempfile.mkdtemp()
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(os.path.join(folder, "a.png"))
    path = os.path.join(folder, "d.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"image": "a.png", "question": "where ?", "box": [0, 0, 8, 6]}) + "\n")
    return path


def _vqa_image_shape(size: object) -> tuple[int, ...]:
    return read_vqa_jsonl(_vqa_file(), size=size)[0].image.shape


_FIVE_HEADS = torch.rand(5, 3, 4).softmax(-1)  # (H, L, S)


def _panel_titles(**options: object) -> list[str]:
    """The panel titles of a `heatmap` of five heads, drawn with `options`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from crossattn.viz import heatmap

    fig = heatmap(_FIVE_HEADS, list("abcd"), list("xyz"), colorbar=False, **options)
    titles = [ax.get_title() for ax in fig.axes]
    plt.close(fig)
    return titles


OUTER_ENTRY_POINTS = [
    ("AttentionRecorder-top_k", lambda n: AttentionRecorder(top_k=n).top_k, "top_k"),
    ("AttentionRecorder-max_bytes", lambda n: AttentionRecorder(max_bytes=n).max_bytes, "max_bytes"),
    ("AttentionRecorder-image_size", lambda n: AttentionRecorder(image_size=(n, 2)).image_size, "image_size"),
    ("AttentionRecorder-steps", lambda n: [AttentionRecorder(steps=n)._step_ok(i) for i in range(6)], "steps"),
    ("pointing_game-image_size", lambda n: pointing_game([np.eye(2)], [(0, 0, 2, 2)], image_size=(n, 4)), "image_size"),
    ("pointing_game-box", lambda n: pointing_game([np.eye(2)], [(0, 0, n, 2)], image_size=(4, 4)), "boxes"),
    ("read_vqa_jsonl-size", _vqa_image_shape, "size"),
    ("generate_corpus-n_train", lambda n: len(generate_corpus(0, n_train=n, n_dev=0, n_test=0).train), "n_train"),
    ("language_rules", lambda n: language_rules(n), "language"),
    ("heatmap-heads", lambda n: _panel_titles(heads=n), "heads"),
    ("heatmap-max_labels", lambda n: _panel_titles(heads=[1, n], max_labels=n), "max_labels"),
    ("payload-head", lambda n: payload(as_record(_FIVE_HEADS), head=n)["head"], "head"),
    ("AttentionRecorder-steps-list", lambda n: [AttentionRecorder(steps=[1, n])._step_ok(i) for i in range(6)], "steps"),
]  # fmt: skip


@pytest.mark.parametrize("kind", INT_KINDS, ids=lambda v: f"{type(v).__name__}-{v.dtype}")
@pytest.mark.parametrize(
    ("name", "make", "arg"), OUTER_ENTRY_POINTS, ids=[e[0] for e in OUTER_ENTRY_POINTS]
)
def test_outer_entry_points_take_numpy_and_torch_ints_as_ints(name, make, arg, kind):
    got, want = make(kind), make(4)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    ("name", "make", "arg"), OUTER_ENTRY_POINTS, ids=[e[0] for e in OUTER_ENTRY_POINTS]
)
def test_outer_entry_points_refuse_bools(name, make, arg):
    with pytest.raises(TypeError, match=rf"\b{arg}\b.*must be"):
        make(True)


def test_box():
    assert _checks.box(np.array([1, 2, 3, 4]), "box") == (1.0, 2.0, 3.0, 4.0)
    assert _checks.box(torch.tensor([0.0, 0.0, 8.0, 6.0]), "box", width=8, height=6)[2] == 8.0
    for bad in ([0, 0, 1], "abcd", [0, 0, 1, float("nan")], [0, 0, True, 1], None):
        with pytest.raises(TypeError, match=r"^b must be \[x0, y0, x1, y1\]: four finite real"):
            _checks.box(bad, "b")
    with pytest.raises(ValueError, match="^b must have x0 < x1 and y0 < y1, got "):
        _checks.box((2, 0, 1, 1), "b")
    with pytest.raises(ValueError, match=r"^b \[0, 0, 9, 6\] must lie inside the image of width 8"):
        _checks.box([0, 0, 9, 6], "b", width=8, height=6)


def test_dataclass_fields_checks_and_stores_every_field_of_a_frozen_dataclass():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Sizes:
        width: object
        depth: object
        name: object = "x"

        def __post_init__(self):
            _checks.dataclass_fields(self, {"depth": _checks.nonnegative_int}, _checks.positive_int)

    # "name" has no rule but the default would refuse it: the default applies to it too
    with pytest.raises(TypeError, match=r"Sizes\.name must be"):
        Sizes(np.int64(3), 0)

    @dataclasses.dataclass(frozen=True)
    class Loose:
        width: object
        name: object = "x"

        def __post_init__(self):
            _checks.dataclass_fields(self, {"width": _checks.positive_int})

    got = Loose(np.int64(3))
    assert type(got.width) is int and got.width == 3 and got.name == "x"
    with pytest.raises(TypeError, match=r"Loose\.width must be a positive int, got True \(bool\)"):
        Loose(True)


def test_known_fields_names_unknown_keys_and_refuses_non_mappings():
    import dataclasses

    @dataclasses.dataclass
    class Conf:
        a: int = 1

    assert _checks.known_fields(Conf, {"a": 2}) == {"a": 2}
    with pytest.raises(
        ValueError, match=r"unknown Conf keys \['b'\]; expected a subset of \['a'\]"
    ):
        _checks.known_fields(Conf, {"a": 2, "b": 3})
    with pytest.raises(TypeError, match=r"Conf\.from_dict: data must be a dict .* got list"):
        _checks.known_fields(Conf, [1])
