"""Train a `CaptionModel` on generated scenes and score where its object-naming words look.

* `caption_vocabulary`: every word a `crossattn.data.toy_scenes` caption can hold, after
  ``<pad>``, ``<bos>``, ``<eos>`` (ids 0, 1, 2: the `CaptionConfig` defaults).
* `train_captioner`: AdamW on the next-word loss (teacher forcing), for ``steps`` steps or
  ``seconds`` seconds, with a tqdm bar on stderr for runs longer than a few seconds.
* `caption_grounding`: per object-naming word of each caption (its size, colour and shape words,
  each kind apart and all together), the pointing game and the attention mass on the object's
  exact mask (`crossattn.grounding`), with the uniform and shuffled baselines and the same scores
  for an untrained model of the same config (random weights); plus caption exact match and token
  accuracy (teacher-forced argmax) against the per-position majority baseline.

The map of a word is the decoder's cross-attention while it *predicts* that word (the row of the
word before it), head mean, then mean over layers: ``(grid, grid)`` over the patches.

Shapes: images (N, 3, H, W) float in [0, 1]; tokens (N, T) long; maps (W, grid, grid).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from ..data.toy_scenes import COLOURS, SHAPES, SIZES, Scene
from ..grounding import grounding_report
from ..models.captioning import CaptionConfig, CaptionModel
from ..models.vocab import pad_ids

__all__ = [
    "CaptionTensors",
    "CaptionTrainResult",
    "caption_grounding",
    "caption_tensors",
    "caption_vocabulary",
    "train_captioner",
    "word_maps",
]

_WORD_KINDS = {**dict.fromkeys(SIZES, "size"), **dict.fromkeys(COLOURS, "colour"),
               **dict.fromkeys(SHAPES, "shape")}  # fmt: skip
_PROGRESS_AFTER_S = 3.0


def caption_vocabulary() -> list[str]:
    """``<pad>``, ``<bos>``, ``<eos>``, then every word of a toy-scene caption."""
    words = ["a", "left", "right", "of", "above", "below", *SIZES, *COLOURS, *SHAPES]
    return ["<pad>", "<bos>", "<eos>", *words]


class CaptionTensors(NamedTuple):
    """images (N, 3, H, W) float in [0, 1]; inputs (N, T) = ``<bos>`` + caption, padded;
    targets (N, T) = caption + ``<eos>``, padded with ``<pad>`` (id 0)."""

    images: Tensor
    inputs: Tensor
    targets: Tensor


def _check_scenes(scenes: object) -> list[Scene]:
    if not isinstance(scenes, Sequence) or not scenes:
        raise ValueError(f"scenes must be a non-empty sequence of Scene, got {scenes!r:.60}")
    for k, s in enumerate(scenes):
        if not isinstance(s, Scene):
            raise TypeError(f"scenes[{k}] must be a Scene, got {type(s).__name__}")
    return list(scenes)


def caption_tensors(scenes: Sequence[Scene], vocab: Sequence[str]) -> CaptionTensors:
    """The images and teacher-forcing tokens of ``scenes``' captions (see `CaptionTensors`)."""
    scenes = _check_scenes(scenes)
    index = {w: i for i, w in enumerate(vocab)}
    captions = [[index[w] for w in s.caption] for s in scenes]
    inputs = pad_ids([[index["<bos>"], *ids] for ids in captions], pad_id=index["<pad>"])
    targets = pad_ids([[*ids, index["<eos>"]] for ids in captions], pad_id=index["<pad>"])
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2)
    return CaptionTensors(images.float() / 255.0, inputs, targets)


class CaptionTrainResult(NamedTuple):
    """The trained model (eval mode), its vocabulary, steps taken and seconds the loop ran."""

    model: CaptionModel
    vocab: list[str]
    steps: int
    seconds: float


def train_captioner(
    scenes: Sequence[Scene],
    config: CaptionConfig | dict[str, Any] | None = None,
    *,
    steps: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 3e-3,
    progress: bool | None = None,
) -> CaptionTrainResult:
    """Train a `CaptionModel` on the captions of ``scenes`` for ``steps`` steps, or until
    ``seconds`` pass (give one or both; at least one step is taken).

    Args:
        scenes: generated scenes (`crossattn.data.toy_scenes.generate_scenes`).
        config: a `CaptionConfig`, or a dict of its keyword fields (``vocab_size`` is the
            caption vocabulary's); None for the defaults.
        seed: seeds the weights and the batches.
        progress: a tqdm bar on stderr; None shows it when ``seconds`` > 3.
    """
    scenes = _check_scenes(scenes)
    if steps is None and seconds is None:
        raise ValueError("give steps, seconds or both to bound the training run")
    steps = None if steps is None else _checks.positive_int(steps, "steps")
    seconds = None if seconds is None else _checks.positive_real(seconds, "seconds")
    seed = _checks.nonnegative_int(seed, "seed")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    lr = _checks.positive_real(lr, "lr")
    vocab = caption_vocabulary()
    if not isinstance(config, CaptionConfig):
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"config must be a CaptionConfig, a dict or None, got {config!r:.60}")
        config = CaptionConfig(len(vocab), **(config or {}))
    if config.vocab_size != len(vocab):
        raise ValueError(f"config.vocab_size must be {len(vocab)}, got {config.vocab_size}")
    data = caption_tensors(scenes, vocab)
    torch.manual_seed(seed)
    model = CaptionModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    show = progress if progress is not None else (seconds or 0) > _PROGRESS_AFTER_S
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc="caption train", disable=not show, file=sys.stderr)
    start, step = time.monotonic(), 0
    model.train()
    while step == 0 or (
        (steps is None or step < steps)
        and (seconds is None or time.monotonic() - start < seconds)
    ):  # fmt: skip
        rows = torch.randint(len(scenes), (batch_size,), generator=gen)
        logits = model(data.images[rows], data.inputs[rows]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), data.targets[rows].flatten(), ignore_index=0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix_str(f"loss {loss.item():.3f}")
    bar.close()
    model.eval()
    return CaptionTrainResult(model, vocab, step, time.monotonic() - start)


@torch.no_grad()
def word_maps(model: CaptionModel, data: CaptionTensors) -> tuple[Tensor, Tensor]:
    """Teacher-forced argmax predictions (N, T) and the maps (N, T, grid, grid): at row t, where
    the decoder looks while predicting target t (head mean, then mean over layers)."""
    out = model(data.images, data.inputs, return_maps=True)
    maps = torch.stack([m.mean(1) for m in out.maps]).mean(0)  # (N, T, P)
    g = model.config.grid
    return out.logits.argmax(-1), maps.reshape(*maps.shape[:2], g, g)


def _scores(maps: Tensor, scenes: list[Scene]) -> dict[str, Any]:
    """Grounding reports per word kind (size, colour, shape) and for all object-naming words."""
    grids: dict[str, list] = {"size": [], "colour": [], "shape": [], "all": []}
    masks: dict[str, list] = {k: [] for k in grids}
    for n, s in enumerate(scenes):
        for t, (word, obj) in enumerate(zip(s.caption, s.caption_objects, strict=True)):
            if obj < 0:
                continue
            for kind in (_WORD_KINDS[word], "all"):
                grids[kind].append(maps[n, t].numpy())
                masks[kind].append(s.objects[obj].mask)
    size = (scenes[0].image.shape[1], scenes[0].image.shape[0])
    return {k: grounding_report(grids[k], masks=masks[k], image_size=size) for k in grids}


def _accuracy(pred: Tensor, model: CaptionModel, data: CaptionTensors) -> dict[str, float]:
    real = data.targets != model.config.pad_id
    token = float((pred == data.targets)[real].float().mean())
    # the majority baseline: the most frequent target at each position, over these captions
    majority = torch.mode(data.targets, dim=0).values  # (T,)
    base = float((data.targets == majority)[real].float().mean())
    greedy = model.caption(data.images, data.targets.shape[1])
    width = min(greedy.shape[1], data.targets.shape[1])
    same = (greedy[:, :width] == data.targets[:, :width]) | ~real[:, :width]
    exact = same.all(1) & (greedy.shape[1] >= real.sum(1))
    return {"token_accuracy": token, "majority_token_accuracy": base,
            "exact_match": float(exact.float().mean())}  # fmt: skip


def caption_grounding(
    model: CaptionModel, scenes: Sequence[Scene], *, seed: int = 0
) -> dict[str, Any]:
    """Score ``model`` on ``scenes``' captions (teacher-forced, the reference caption).

    Returns ``{"n_captions", "token_accuracy", "majority_token_accuracy", "exact_match",
    "size" | "colour" | "shape" | "all": {"n", "pointing_game", "mass", "mass_over_area",
    "uniform": {...}, "shuffled": {...}, "random_weights": {"pointing_game", "mass",
    "mass_over_area"}}}``; rates are fractions in [0, 1]. The hit is the map's largest patch
    centre on the object's exact mask; the random-weights scores come from an untrained
    `CaptionModel` of the same config, seeded with ``seed``.
    """
    if not isinstance(model, CaptionModel):
        raise TypeError(f"model must be a CaptionModel, got {type(model).__name__}")
    scenes = _check_scenes(scenes)
    seed = _checks.nonnegative_int(seed, "seed")
    vocab = caption_vocabulary()
    if model.config.vocab_size != len(vocab):
        raise ValueError(f"model.config.vocab_size must be {len(vocab)} (caption_vocabulary()), "
                         f"got {model.config.vocab_size}")  # fmt: skip
    data = caption_tensors(scenes, vocab)
    was_training = model.training
    model.eval()
    pred, maps = word_maps(model, data)
    report: dict[str, Any] = {"n_captions": len(scenes), **_accuracy(pred, model, data)}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        untrained = CaptionModel(model.config).eval()
    random = _scores(word_maps(untrained, data)[1], scenes)
    for kind, scores in _scores(maps, scenes).items():
        keys = ("pointing_game", "mass", "mass_over_area")
        report[kind] = {**scores, "random_weights": {k: random[kind][k] for k in keys}}
    model.train(was_training)
    return report
