"""crossattn.capture on transformers encoder-decoder models and a diffusers UNet.

Tiny models with random weights are built from configs (nothing is downloaded). The recorded
maps (recomputed from the modules' inputs while the models keep their SDPA path) are compared
with the same models run with eager attention and ``output_attentions``, per decode step, with
greedy and beam search; the diffusers maps with a manual float64 recomputation per timestep.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from crossattn.capture import AttentionRecorder
from crossattn.viz._record import as_record
from tests.conftest import assert_within, expected, float64_floor

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.interop

TOL = 1e-5


def tiny_seq2seq(family: str, init_std: float | None = None):
    torch.manual_seed(0)
    if family == "bart":
        config = transformers.BartConfig(
            vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=2,
            encoder_attention_heads=2, decoder_attention_heads=4, encoder_ffn_dim=32,
            decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
            init_std=init_std or 0.02,
        )  # fmt: skip
        model = transformers.BartForConditionalGeneration(config)
    elif family == "marian":
        config = transformers.MarianConfig(
            vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=2,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
            decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=1, eos_token_id=2,
            decoder_start_token_id=1, forced_eos_token_id=None,
        )  # fmt: skip
        model = transformers.MarianMTModel(config)
    else:
        config = transformers.T5Config(
            vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2,
            num_heads=3, pad_token_id=1, eos_token_id=2, decoder_start_token_id=0,
        )  # fmt: skip
        model = transformers.T5ForConditionalGeneration(config)
    model.eval()
    eager = type(model)._from_config(copy.deepcopy(model.config), attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    eager.eval()
    assert eager.config._attn_implementation == "eager"
    return model, eager


def source_batch():
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 2], [5, 11, 12, 2, 1, 1]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return dict(input_ids=input_ids, attention_mask=attention_mask)


def decoder_layer_index(name: str) -> int:
    # model.decoder.layers.<i>.encoder_attn | decoder.block.<i>.layer.1.EncDecAttention
    parts = name.split(".")
    return int(parts[parts.index("layers" if "layers" in parts else "block") + 1])


@pytest.mark.parametrize("family", ["bart", "t5", "marian"])
def test_greedy_generate_maps_equal_eager_cross_attentions(family):
    model, eager = tiny_seq2seq(family)
    assert model.config._attn_implementation == "sdpa"
    kw = dict(**source_batch(), max_new_tokens=5, min_new_tokens=5, do_sample=False, return_dict_in_generate=True,
              output_scores=True)  # fmt: skip
    plain = model.generate(**kw)
    with AttentionRecorder(model, heads="all") as rec:
        recorded = model.generate(**kw)
    # Recording leaves the generation untouched.
    assert torch.equal(plain.sequences, recorded.sequences)
    assert all(torch.equal(a, b) for a, b in zip(plain.scores, recorded.scores))
    ref = eager.generate(**kw, output_attentions=True)
    assert torch.equal(ref.sequences, recorded.sequences)
    steps = len(ref.cross_attentions)
    assert steps == 5
    assert len(rec.layer_names) == 2  # one cross-attention per decoder layer, no self-attention
    for name in rec.layer_names:
        assert rec.sources[name].startswith("transformers:")
        maps = rec.maps[name]
        assert len(maps) == steps and rec.steps[name] == list(range(steps))
        layer = decoder_layer_index(name)
        for t in range(steps):
            want = ref.cross_attentions[t][layer]  # (B, H, 1, S)
            assert_within(maps[t], want, TOL, f"{name} step {t}")
            # The padded source positions of row 1 get no weight.
            assert torch.equal(maps[t][1, :, :, 4:], torch.zeros_like(maps[t][1, :, :, 4:]))
        # Greedy: the steps joined along the query axis are each sequence's map.
        joined = rec.concat_steps(name)  # (B, H, steps, S)
        assert joined.shape == (2, model.config.decoder_attention_heads if family != "t5"
                                else model.config.num_heads, steps, 6)  # fmt: skip


@pytest.mark.parametrize("eos_bias", [0.0, 6.0], ids=["all run to the end", "some end early"])
def test_beam_search_maps_per_step_and_following_the_returned_beams(eos_bias):
    model, eager = tiny_seq2seq("bart", init_std=0.5)  # large weights: beams that diverge
    with torch.no_grad():
        for m in (model, eager):
            m.final_logits_bias[0, 2] += eos_bias  # a likelier EOS: some sequences end early
    kw = dict(**source_batch(), max_new_tokens=8, num_beams=3, num_return_sequences=2,
              do_sample=False, return_dict_in_generate=True, output_scores=True)  # fmt: skip
    plain = model.generate(**kw)
    # Two recorders on the same run: the head mean and every head.
    with AttentionRecorder(model) as rec, AttentionRecorder(model, heads="all") as rec_all:
        out = model.generate(**kw)
    assert torch.equal(plain.sequences, out.sequences)
    assert rec_all.layer_names == rec.layer_names
    ref = eager.generate(**kw, output_attentions=True)
    assert torch.equal(ref.sequences, out.sequences)
    beam_indices = out.beam_indices  # (N, T)
    assert beam_indices.shape[0] == 4 and beam_indices.shape[1] >= 4
    # -1 marks the steps after a sequence ended: none, or some (whose maps must be zeros)
    assert bool((beam_indices == -1).any()) == (eos_bias > 0)
    # The beams really are reordered in this run (a row other than its own at some step).
    own_rows = torch.tensor([0, 0, 3, 3])[:, None]
    assert bool(((beam_indices >= 0) & (beam_indices != own_rows)).any())
    for name in rec.layer_names:
        layer = decoder_layer_index(name)
        # Per step: one row per beam, in that step's beam order, as transformers reports them.
        for t, step_map in enumerate(rec.maps[name]):
            assert step_map.shape == (6, 1, 6)
            assert_within(step_map, ref.cross_attentions[t][layer].mean(1), TOL, f"step {t}")
            heads_map = rec_all.maps[name][t]  # (rows, heads, 1, S)
            assert heads_map.shape == (6, 4, 1, 6)
            assert_within(heads_map, ref.cross_attentions[t][layer], TOL, f"step {t} heads")
    followed = rec.follow_beams(beam_indices)
    followed_all = rec_all.follow_beams(beam_indices)
    # Teacher-forced eager run of the returned sequences: its cross-attention at position t is
    # the map of the beam row that produced token t + 1.
    n, steps = beam_indices.shape
    src = {k: v.repeat_interleave(2, dim=0) for k, v in source_batch().items()}
    with torch.no_grad():
        forced = eager(**src, decoder_input_ids=out.sequences[:, :steps], output_attentions=True)
    for name in rec.layer_names:
        got = followed[name]  # (N, T, S)
        assert got.shape == (n, steps, 6)
        want = forced.cross_attentions[decoder_layer_index(name)].mean(1)  # (N, T, S)
        valid = beam_indices >= 0
        assert_within(got[valid], want[valid], TOL, f"{name} followed beams")
        assert torch.equal(got[~valid], torch.zeros_like(got[~valid]))
        # Every head: (N, T, heads, S) against the forced run's (N, heads, T, S).
        got_all = followed_all[name]
        assert got_all.shape == (n, steps, 4, 6)
        want_all = forced.cross_attentions[decoder_layer_index(name)].transpose(1, 2)
        assert_within(got_all[valid], want_all[valid], TOL, f"{name} followed beams, per head")
        assert torch.equal(got_all[~valid], torch.zeros_like(got_all[~valid]))
    # The viewer takes the followed maps as a capture: batch=i is returned sequence i.
    for i in range(n):
        record = as_record(followed, batch=i)
        assert record.layer_names == rec.layer_names
        for j, name in enumerate(rec.layer_names):
            assert np.array_equal(record.weights[j, 0], followed[name][i].numpy())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_greedy_generate_maps_equal_eager():
    model, eager = tiny_seq2seq("bart")
    model, eager = model.cuda(), eager.cuda()
    src = {k: v.cuda() for k, v in source_batch().items()}
    kw = dict(**src, max_new_tokens=5, min_new_tokens=5, do_sample=False,
              return_dict_in_generate=True, output_scores=True)  # fmt: skip
    plain = model.generate(**kw)
    with AttentionRecorder(model, heads="all", device=None) as rec:
        recorded = model.generate(**kw)
    assert torch.equal(plain.sequences, recorded.sequences)
    assert all(torch.equal(a, b) for a, b in zip(plain.scores, recorded.scores))
    ref = eager.generate(**kw, output_attentions=True)
    for name in rec.layer_names:
        for t, step_map in enumerate(rec.maps[name]):
            assert step_map.is_cuda
            want = ref.cross_attentions[t][decoder_layer_index(name)]
            assert_within(step_map, want, TOL, f"{name} step {t}")


def test_transformers_reductions_steps_layers_top_k():
    model, _ = tiny_seq2seq("bart")
    kw = dict(**source_batch(), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    with AttentionRecorder(model, heads="all") as full:
        model.generate(**kw)
    with AttentionRecorder(
        model, heads=[3, 1], layers=r"layers\.1\.", steps=range(1, 4, 2), top_k=2
    ) as rec:
        model.generate(**kw)
    (name,) = rec.layer_names
    assert name == "model.decoder.layers.1.encoder_attn"
    assert rec.steps[name] == [1, 3]
    for got, t in zip(rec.to_dense()[name], [1, 3]):
        want = full.maps[name][t][:, [3, 1]]
        values, cols = want.topk(2, dim=-1)
        assert_within(got, torch.zeros_like(want).scatter_(-1, cols, values), 0.0, "top-2")


# ---------------------------------------------------------------- diffusers


def tiny_unet():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
        attention_head_dim=4, norm_num_groups=8,
    ).eval()  # fmt: skip


@pytest.mark.parametrize("text_mask", [False, True])
def test_unet_per_timestep_maps_equal_manual_recomputation(text_mask):
    unet = tiny_unet()
    sample = torch.randn(2, 4, 8, 6)  # (B, C, H, W): not square
    text = torch.randn(2, 7, 12)
    kw = {}
    if text_mask:
        kw["encoder_attention_mask"] = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    seen: dict[str, list] = {}

    def keep_inputs(name):
        def pre_hook(module, args, kwargs):
            seen.setdefault(name, []).append((args[0] if args else kwargs["hidden_states"],
                                              kwargs.get("encoder_hidden_states"),
                                              kwargs.get("attention_mask")))  # fmt: skip

        return pre_hook

    timesteps = [999, 500, 1]
    with torch.no_grad():
        plain = [unet(sample, t, encoder_hidden_states=text, **kw).sample for t in timesteps]
        handles = [
            m.register_forward_pre_hook(keep_inputs(n), with_kwargs=True)
            for n, m in unet.named_modules()
            if n.endswith("attn2")
        ]
        with AttentionRecorder(unet, heads="all") as rec:
            outs = [unet(sample, t, encoder_hidden_states=text, **kw).sample for t in timesteps]
        for h in handles:
            h.remove()
    assert all(torch.equal(a, b) for a, b in zip(plain, outs))  # outputs unchanged
    assert sorted(rec.layer_names) == sorted(seen)
    for name in rec.layer_names:
        assert rec.sources[name] == "diffusers"
        assert rec.timesteps[name] == [float(t) for t in timesteps]
        h, w = rec.query_grid[name]
        assert (h, w) in ((8, 6), (4, 3)) and h * w == rec.maps[name][0].shape[-2]
        module = unet.get_submodule(name)
        for t, (hidden, context, mask) in enumerate(seen[name]):
            assert context is text
            b, length, _ = hidden.shape
            q = module.to_q(hidden).view(b, length, module.heads, -1).transpose(1, 2)
            k = module.to_k(context).view(b, 7, module.heads, -1).transpose(1, 2)
            key_mask = None if mask is None else (mask[:, 0] == 0)  # (B, S), 0 = keep
            exp = expected(q, k, k, torch.float32, key_mask=key_mask, return_weights=True)
            got = rec.maps[name][t]  # (B, heads, h*w, S)
            assert_within(got, exp.weights, exp.weights_tol, f"{name} timestep {t}")
            if text_mask:
                assert torch.equal(got[1, ..., 4:], torch.zeros_like(got[1, ..., 4:]))


def test_unet_grid_and_timestep_selection(tmp_path):
    unet = tiny_unet()
    sample, text = torch.randn(1, 4, 8, 6), torch.randn(1, 7, 12)
    with torch.no_grad():
        with AttentionRecorder(unet) as full:
            for t in (999, 500):
                unet(sample, t, encoder_hidden_states=text)
        with AttentionRecorder(unet, grid=(4, 3), timesteps=[500]) as rec:
            for t in (999, 500):
                unet(sample, t, encoder_hidden_states=text)
    path = tmp_path / "unet.safetensors"
    rec.save(path)
    back = AttentionRecorder.load(path)
    assert back.query_grid == rec.query_grid and back.timesteps == rec.timesteps
    assert sorted(rec.layer_names) == sorted(full.layer_names)
    eps = torch.finfo(torch.float32).eps
    for name in rec.layer_names:
        assert full.timesteps[name] == [999.0, 500.0] and full.steps[name] == [0, 1]
        assert rec.query_grid[name] == (4, 3)
        # Timestep selection keeps the second call (t = 500), counted as step 1.
        assert rec.timesteps[name] == [500.0] and rec.steps[name] == [1]
        (got,) = rec.maps[name]
        assert got.shape == (1, 12, 7)
        assert torch.equal(back.maps[name][0], got)
        h, w = full.query_grid[name]  # the layer's resolution of the 8 x 6 sample
        assert (h, w) in ((8, 6), (4, 3))

        def on_grid(dense, h=h, w=w):
            # Downsampling is documented as averaging areas: each of the 4 x 3 cells is the
            # mean of an (h/4) x (w/3) block of image positions (row-major), in float64.
            blocks = dense.double().view(1, 4, h // 4, 3, w // 3, 7)
            return blocks.mean(dim=(2, 4)).reshape(1, 12, 7)

        want = on_grid(full.maps[name][1])
        # A mean of at most 4 float32 weights rounded to float32: a few ulps of the largest.
        tol = 4 * eps * want.abs().max().item() + float64_floor(want)
        assert_within(got, want, tol, f"{name} on the 4 x 3 grid")
        # The map of the other timestep (t = 999) is told apart at that tolerance.
        assert (got.double() - on_grid(full.maps[name][0])).abs().max().item() > tol
