"""Train, save, load and run a `VQAModel`, and read where its questions look.

The pieces of ``crossattn vqa train|answer|score`` and ``crossattn demo --task vqa``:

* `VQAExamples`: questions with their images (shared between questions), answers, boxes in the
  original pixels and grounding targets over the patch grid (`pointable_target`: the object's
  share of each patch, plus the patches whose centre is on it; from the exact mask for generated
  scenes, from the box for the user's JSONL data).
* `train_vqa`: AdamW on the answer loss, plus with ``guided_grounding`` a KL loss that pulls one
  head (layer -1, head 0, mean over the question tokens) towards the normalised target; bounded by
  a deadline (``time.monotonic()``) so the whole command keeps to its ``--minutes``.
* `grounding_map`: the map a model grounds with: the mean over layers, heads and question tokens
  (unsupervised), or the supervised head.
* `save_vqa` / `load_vqa`: a model directory (``model.safetensors``, ``vqa.json`` with the config,
  vocabulary, answers and grounding choice), written to a temporary directory and renamed.

Shapes: images (N, 3, H, W) uint8; maps (Q, grid * grid); points (x, y) in original pixels.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from ..data.toy_scenes import Scene
from ..data.vqa import VQARecord
from ..grounding import map_point
from ..models.vocab import Vocabulary, pad_ids
from ..models.vqa import VQAConfig, VQAModel
from .loop import lr_factor

__all__ = [
    "ANSWERS_ONLY_CONFIG",
    "ANSWERS_ONLY_GROUNDING",
    "GUIDED_CONFIG",
    "VQAExamples",
    "VQAOptions",
    "VQAPredictor",
    "VQATrainResult",
    "encode_questions",
    "question_images",
    "box_share",
    "pointable_target",
    "choose_head",
    "map_information",
    "score",
    "smooth_grid",
    "examples_from_records",
    "examples_from_scenes",
    "grounding_map",
    "load_vqa",
    "save_vqa",
    "train_vqa",
]

WEIGHTS_FILE = "model.safetensors"
META_FILE = "vqa.json"
GUIDED_HEAD = (-1, 0)  # (layer, head) that the grounding loss supervises
# Without a grounding signal, every question token looks at the patches through two kinds of
# heads (`local_heads=2`). Two heads key on what lies around each patch's centre
# (`local_stem="centre"`): the pointing game asks whether a patch's centre lies on the object,
# and keys that see a patch's whole square peaked on patches holding only the object's rim,
# whose centres lie outside it (the most common miss). The other two key on the wide stem, which
# sees an object's shape from around it and also gives every head its values (`values="stem"`),
# so that what the answer reads (shape, size) is on the patches the keys find: added to the
# centre heads in the mean map, they pick out an object named by its shape. In the 4-minute
# demo: pointing game 78.2% / 88.4% (seeds 0 / 1), accuracy 99.6-99.8%, against 76.2-78.2% and
# 97-98% for centre keys alone and 53-68% for keys from the whole patch (docs/vqa.md).
ANSWERS_ONLY_CONFIG: dict[str, Any] = {
    "readout": "mean", "image_layers": 0, "stem": "wide", "values": "stem", "local_heads": 2,
    "local_stem": "centre",
}  # fmt: skip
# The supervised head finds an object by its shape only when a patch feature sees the object's
# outline, not just its own corner of it: the wide stem (31-pixel view) took the pointing game
# from 86% to 99.6-100% and the accuracy from 89% to 99.8-100% (docs/vqa.md). Without
# supervision, heads that all key on that view spread an object over its neighbours (53-58%), so
# the answers-only default keys only two heads on it, beside two keyed on the patch centres.
GUIDED_CONFIG: dict[str, Any] = {"stem": "wide"}
# The map an answers-only model grounds with: the mean over layers, heads and tokens, blurred by
# one patch (`smooth_grid`); a mean that rings an object with mass peaks on it once blurred
# (the pointing game 68.0% -> 73.6% on one model; its single most informative head: 60.0%).
ANSWERS_ONLY_GROUNDING = "smoothed"
_INIT_LOCK = threading.Lock()  # seeding and initialising share torch's global generator


@dataclass
class VQAExamples:
    """Questions about images. ``image_index[q]`` is the row of ``images`` question q is about."""

    images: Tensor  # (N, 3, H, W) uint8
    image_index: Tensor  # (Q,) long
    questions: list[tuple[str, ...]]
    answers: list[str] | None
    boxes: list[tuple[float, float, float, float] | None]  # original pixels
    original_sizes: list[tuple[int, int]]  # (width, height) per question
    targets: Tensor | None = None  # (Q, P) float, rows sum to 1, or None
    masks: list[np.ndarray] | None = None  # exact (H, W) object masks, generated scenes only

    def __len__(self) -> int:
        return len(self.questions)

    def subset(self, rows: Sequence[int]) -> VQAExamples:
        rows = list(rows)
        return replace(
            self,
            image_index=self.image_index[rows],
            questions=[self.questions[r] for r in rows],
            answers=None if self.answers is None else [self.answers[r] for r in rows],
            boxes=[self.boxes[r] for r in rows],
            original_sizes=[self.original_sizes[r] for r in rows],
            targets=None if self.targets is None else self.targets[rows],
            masks=None if self.masks is None else [self.masks[r] for r in rows],
        )


def _grid_share(mask: Tensor, grid: int) -> Tensor:
    """(H, W) bool -> (grid * grid,) the object's share of each patch, normalised to sum 1."""
    h, w = mask.shape
    share = mask.float().reshape(grid, h // grid, grid, w // grid).mean((1, 3)).reshape(-1)
    return share / share.sum().clamp_min(1e-12)


def box_share(box: Sequence[float], size: tuple[int, int], grid: int) -> Tensor:
    """The box's share of each patch of a ``grid`` x ``grid`` split of a (width, height) image."""
    width, height = size
    x0, y0, x1, y1 = box
    edges = np.arange(grid + 1) / grid

    def overlap(lo: float, hi: float, extent: int) -> np.ndarray:  # (grid,) overlap per patch
        return np.clip(
            np.minimum(edges[1:] * extent, hi) - np.maximum(edges[:-1] * extent, lo), 0, None
        )  # noqa: E501

    share = (
        torch.from_numpy(np.outer(overlap(y0, y1, height), overlap(x0, x1, width)))
        .reshape(-1)
        .float()
    )  # noqa: E501
    return share / share.sum().clamp_min(1e-12)


def pointable_target(share: Tensor, centre_inside: Tensor) -> Tensor:
    """The guided grounding target (P,): the object's share of each patch plus one on the
    patches whose centre lies on the object, normalised to sum 1.

    The share alone spreads over every patch the object touches, and its largest cell's centre
    can miss a small object (the pointing game reads that centre); the extra mass puts the
    target's maximum on a patch whose centre is on the object whenever one is.
    """
    target = share + centre_inside.to(share.dtype)
    return target / target.sum().clamp_min(1e-12)


def _centres_in_mask(mask: Tensor, grid: int) -> Tensor:
    """(H, W) bool -> (grid * grid,) bool: is the pixel under each patch centre on the mask?"""
    h, w = mask.shape
    rows = ((torch.arange(grid) + 0.5) * h / grid).long().clamp_max(h - 1)
    cols = ((torch.arange(grid) + 0.5) * w / grid).long().clamp_max(w - 1)
    return mask[rows[:, None], cols[None, :]].reshape(-1)


def _centres_in_box(box: Sequence[float], size: tuple[int, int], grid: int) -> Tensor:
    """(grid * grid,) bool: does each patch centre fall inside the box (x1, y1 exclusive)?"""
    centre = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    xs, ys = centre * size[0], centre * size[1]
    x0, y0, x1, y1 = box
    return (((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]).reshape(-1)


def examples_from_scenes(scenes: Sequence[Scene], grid: int = 8) -> VQAExamples:
    """Every question of every scene; grounding targets from the exact object masks."""
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2)
    index, questions, answers, boxes, sizes, targets, masks = [], [], [], [], [], [], []
    for i, s in enumerate(scenes):
        height, width = s.image.shape[:2]
        for q in s.questions:
            obj = s.objects[q.object_index]
            index.append(i)
            questions.append(q.words)
            answers.append(q.answer)
            boxes.append(tuple(float(v) for v in obj.box))
            sizes.append((width, height))
            mask = torch.from_numpy(obj.mask.copy())
            inside = _centres_in_mask(mask, grid)
            if not inside.any():  # a small round object between the centres: use its box
                inside = _centres_in_box(obj.box, (width, height), grid)
            targets.append(pointable_target(_grid_share(mask, grid), inside))
            masks.append(obj.mask)
    return VQAExamples(
        images.contiguous(), torch.tensor(index), questions, answers, boxes, sizes,
        torch.stack(targets) if targets else None, masks,
    )  # fmt: skip


def scene_questions(count: int, seed: int) -> VQAExamples:
    """``count`` questions about generated scenes (seeded), from as few scenes as it takes."""
    from ..data.toy_scenes import generate_scenes

    n = max(2, count // 5)
    while True:
        examples = examples_from_scenes(generate_scenes(n, seed=seed))
        if len(examples) >= count:
            return examples.subset(range(count))
        n = int(n * 1.1) + 1


def examples_from_records(records: Sequence[VQARecord], grid: int = 8) -> VQAExamples:
    """Questions read by `read_vqa_jsonl` (with ``size=``); targets from the boxes, if all have
    one. Records that share an image array (lines naming one file) share one row of ``images``."""
    if not records:
        raise ValueError("no VQA records to use")
    rows: dict[int, int] = {}  # id of a record's image array -> its row: shared images once
    distinct: list[np.ndarray] = []
    for r in records:
        if id(r.image) not in rows:
            rows[id(r.image)] = len(distinct)
            distinct.append(r.image)
    images = torch.from_numpy(np.stack(distinct)).permute(0, 3, 1, 2)  # (N, 3, H, W)
    index = [rows[id(r.image)] for r in records]
    boxes = [r.box for r in records]
    answers = [r.answer for r in records]
    targets = None
    if all(b is not None for b in boxes):
        targets = torch.stack([
            pointable_target(box_share(r.box, r.original_size, grid),
                             _centres_in_box(r.box, r.original_size, grid))
            for r in records
        ])  # fmt: skip
    return VQAExamples(
        images.contiguous(), torch.tensor(index), [r.question for r in records],
        None if any(a is None for a in answers) else answers, boxes,
        [r.original_size for r in records], targets,
    )  # fmt: skip


@dataclass(frozen=True)
class VQAOptions:
    """Training options; model sizes go in ``config`` (`VQAConfig` fields but the vocab sizes),
    over `GUIDED_CONFIG` with ``guided_grounding`` and `ANSWERS_ONLY_CONFIG` without.
    ``centre_weight`` weighs the auxiliary answer's loss of a model with ``centre_answer``;
    ``amx_bfloat16`` trains the wide stems' convolutions under bfloat16 autocast on a CPU with
    AMX tiles (`VQAModel.train_convolutions_in_bfloat16`)."""

    seconds: float = 240.0
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 50
    cosine: bool = True
    label_smoothing: float = 0.0
    weight_decay: float = 0.01
    guided_grounding: bool = False
    guided_weight: float = 0.5
    centre_weight: float = 1.0
    amx_bfloat16: bool = True
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Each option by its `crossattn._checks` rule (ints stored as plain ints); `config` is
        checked by `VQAConfig` when the model is made."""
        _checks.dataclass_fields(self, _VQA_OPTION_RULES)


_VQA_OPTION_RULES: dict[str, Callable[[Any, str], Any]] = {
    "seconds": lambda value, name: _checks.real(value, name, low=0.0, infinite=True),
    "max_steps": lambda value, name: None if value is None else _checks.positive_int(value, name),
    "batch_size": _checks.positive_int,
    "lr": _checks.positive_real, "warmup": _checks.nonnegative_int, "cosine": _checks.boolean,
    "label_smoothing": _checks.probability, "weight_decay": _checks.nonnegative_real,
    "guided_grounding": _checks.boolean, "guided_weight": _checks.nonnegative_real,
    "centre_weight": _checks.nonnegative_real, "amx_bfloat16": _checks.boolean,
    "seed": _checks.integer,
}  # fmt: skip


@dataclass
class VQATrainResult:
    model: VQAModel
    vocab: Vocabulary
    answers: list[str]
    steps: int
    seconds: float


def encode_questions(
    vocab: Vocabulary, questions: Sequence[Sequence[str]]
) -> tuple[Tensor, Tensor]:
    ids = pad_ids([vocab.encode(q) if q else [] for q in questions], min_width=1)  # 0 = <pad>
    return ids, ids != 0


def _head_of(choice: str) -> tuple[int, int] | None:
    """``"head:L:H"`` -> (L, H); None for any other string."""
    parts = choice.split(":")
    if len(parts) == 3 and parts[0] == "head" and all(p.lstrip("-").isdigit() for p in parts[1:]):
        return int(parts[1]), int(parts[2])
    return None


def smooth_grid(maps: Tensor, radius: int = 1) -> Tensor:
    """(Q, P) maps over a square grid -> the same maps blurred by ``radius`` patches: a binomial
    kernel of side 2 * radius + 1 (``[1, 2, 1] x [1, 2, 1] / 16`` for radius 1, ``[1, 4, 6, 4, 1]``
    outer itself / 256 for radius 2), with zero padding, then renormalised to sum 1."""
    grid = math.isqrt(maps.shape[1])
    if grid * grid != maps.shape[1]:
        raise ValueError(f"maps must cover a square grid, got {maps.shape[1]} cells")
    radius = _checks.positive_int(radius, "radius")
    row = torch.tensor([math.comb(2 * radius, k) for k in range(2 * radius + 1)],
                       dtype=torch.float64)  # fmt: skip
    kernel = (row[:, None] * row[None, :] / row.sum() ** 2)[None, None]  # (1, 1, side, side)
    kernel = kernel.to(dtype=maps.dtype, device=maps.device)  # built in float64: no overflow
    out = F.conv2d(maps.reshape(-1, 1, grid, grid), kernel, padding=radius).reshape(maps.shape)
    return out / out.sum(1, keepdim=True).clamp_min(1e-12)


def check_grounding(choice: str) -> int | None:
    """The smoothing radius of a grounding ``choice`` ("smoothed:R" -> R; None for "mean", "guided"
    and "head:L:H"); raises ValueError naming the choices for anything `grounding_map` does not
    take. A head choice is checked against the model's layers and heads when the maps are made."""
    if not isinstance(choice, str):
        raise TypeError(f"grounding choice must be a str, got {type(choice).__name__}")
    if choice in ("mean", "guided") or _head_of(choice) is not None:
        return None
    name, colon, radius = choice.partition(":")
    if name == "smoothed" and not colon:
        return 1
    if name == "smoothed" and radius.isascii() and radius.isdigit() and int(radius) > 0:
        return int(radius)
    raise ValueError("grounding choice must be 'mean', 'smoothed', 'smoothed:R' (R >= 1), "
                     f"'guided' or 'head:L:H', got {choice!r}")  # fmt: skip


def grounding_map(maps: Sequence[Tensor], map_mask: Tensor, choice: str) -> Tensor:
    """(Q, P): the grounding map from each layer's (Q, heads, T, P) maps.

    ``map_mask`` (Q, T) bool marks the real tokens (`VQAOutput.map_mask`). ``choice`` "mean": the
    mean over layers, heads and real tokens; "smoothed": that mean blurred by one patch, or by R
    patches for "smoothed:R" (`smooth_grid`); "guided": the supervised head (`GUIDED_HEAD`), mean
    over the real tokens; "head:L:H": layer L's head H, mean over the real tokens (the choice
    `choose_head` makes on training data).
    """
    keep = map_mask[:, None, :, None].to(maps[0].dtype)  # (Q, 1, T, 1)
    count = keep.sum(2).clamp_min(1.0)[:, 0]  # (Q, 1)
    head = GUIDED_HEAD if choice == "guided" else _head_of(choice)
    if head is not None:
        layer, h = head
        if not (-len(maps) <= layer < len(maps) and -maps[0].shape[1] <= h < maps[0].shape[1]):
            raise ValueError(f"grounding choice {choice!r} names no head of {len(maps)} layers "
                             f"x {maps[0].shape[1]} heads")  # fmt: skip
        return (maps[layer][:, h : h + 1] * keep).sum(2)[:, 0] / count
    radius = check_grounding(choice)
    per_layer = [(m * keep).sum(2).mean(1) / count for m in maps]  # (Q, P) each
    mean = torch.stack(per_layer).mean(0)
    return mean if radius is None else smooth_grid(mean, radius)


def _entropy(p: Tensor) -> Tensor:
    """Entropy in nats along the last dimension."""
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def map_information(maps: Tensor) -> float:
    """How much a map depends on its input: H(mean map) - mean H(map), in nats, for (Q, P) maps.

    Zero for a map that is the same on every input (an attention sink) and for a uniform map;
    up to log(P) for maps that each point at one cell, a different cell per input. It needs no
    box or mask, so it can choose a grounding map on unlabelled training questions.
    """
    return float(_entropy(maps.mean(0)) - _entropy(maps).mean())


@torch.no_grad()
def choose_head(
    model: VQAModel, vocab: Vocabulary, examples: VQAExamples, *, limit: int = 512
) -> tuple[str, dict[str, float]]:
    """The grounding choice, among every single head and the mean, whose maps carry the most
    `map_information` on (up to ``limit`` of) ``examples``, and every candidate's score."""
    rows = torch.arange(min(limit, len(examples)))
    ids, mask = encode_questions(vocab, [examples.questions[r] for r in rows.tolist()])
    res = model.eval()(question_images(examples, rows), ids, mask, return_maps=True)
    candidates = ["mean"] + [
        f"head:{layer}:{h}" for layer in range(len(res.maps)) for h in range(res.maps[0].shape[1])
    ]  # fmt: skip
    scores = {c: map_information(grounding_map(res.maps, res.map_mask, c)) for c in candidates}
    return max(candidates, key=lambda c: scores[c]), scores


def question_images(ex: VQAExamples, rows: Tensor) -> Tensor:
    return ex.images[ex.image_index[rows]].float() / 255.0


def _progress(total: float, enabled: bool):
    from tqdm.auto import tqdm

    total = round(total) if math.isfinite(total) else None  # a step-bounded run has no end time
    return tqdm(total=total, unit="s", desc="vqa train", disable=not enabled, file=sys.stderr)


def _learning_rate(options: VQAOptions, step: int, done: float) -> float:
    """`lr_factor` of ``options``: linear warmup over ``options.warmup`` steps, then (``cosine``)
    a cosine decay to a tenth over the run; ``done`` in [0, 1] is the share of the run (steps or
    seconds) behind us."""
    return options.lr * lr_factor(step, done, options.warmup, 0.1 if options.cosine else 1.0)


def _loss(model: VQAModel, examples: VQAExamples, rows: Tensor, ids: Tensor, mask: Tensor,
          labels: Tensor, options: VQAOptions) -> Tensor:  # fmt: skip
    """The answer loss of one batch, plus the auxiliary answer's loss (weighted by
    ``centre_weight``) for a model with ``centre_answer`` and the guided grounding loss when asked
    for."""
    guided = options.guided_grounding
    out = model(question_images(examples, rows), ids[rows], mask[rows], return_maps=guided)
    loss = F.cross_entropy(out.logits, labels[rows], label_smoothing=options.label_smoothing)
    if out.centre_logits is not None:
        loss = loss + options.centre_weight * F.cross_entropy(
            out.centre_logits, labels[rows], label_smoothing=options.label_smoothing
        )
    if guided:
        head = grounding_map(out.maps, out.map_mask, "guided")
        target = examples.targets[rows]
        loss = loss + options.guided_weight * F.kl_div(
            head.clamp_min(1e-8).log(), target, reduction="batchmean"
        )
    return loss


def train_vqa(
    examples: VQAExamples,
    options: VQAOptions = VQAOptions(),
    *,
    deadline: float | None = None,
    progress: bool = False,
    callback: Callable[[int, VQAModel], None] | None = None,
) -> VQATrainResult:
    """Train a `VQAModel` on ``examples`` until ``options.seconds`` (or ``deadline``) pass or
    ``options.max_steps`` steps are taken.

    ``callback(step, model)``, when given, is called after every step (the model in train mode;
    a callback that evaluates switches modes itself). Returns the model (eval mode), the question
    vocabulary, the answer list (logit order), the steps taken and the seconds the loop ran.
    """
    if examples.answers is None:
        raise ValueError("training examples need an answer on every question")
    if options.guided_grounding and examples.targets is None:
        raise ValueError("guided grounding needs a box (or mask) on every training question")
    vocab = Vocabulary.build(examples.questions)
    answers = sorted(set(examples.answers))
    sizes = (GUIDED_CONFIG if options.guided_grounding else ANSWERS_ONLY_CONFIG) | options.config
    config = VQAConfig(vocab_size=len(vocab), n_answers=len(answers), **sizes)
    with _INIT_LOCK:  # two models trained side by side in threads get their seeded weights
        torch.manual_seed(options.seed)
        model = VQAModel(config).train_convolutions_in_bfloat16(options.amx_bfloat16)
    ids, mask = encode_questions(vocab, examples.questions)
    answer_id = {a: i for i, a in enumerate(answers)}
    labels = torch.tensor([answer_id[a] for a in examples.answers])
    opt = torch.optim.AdamW(
        model.parameters(), lr=options.lr, weight_decay=options.weight_decay, fused=True
    )  # one kernel for all parameters: 1.6 and 0.9 ms off a guided and an answers-only step
    start = time.monotonic()
    end = start + options.seconds if deadline is None else min(deadline, start + options.seconds)
    gen = torch.Generator().manual_seed(options.seed)
    bar, step = _progress(end - start, progress), 0
    model.train()
    while step == 0 or (time.monotonic() < end and step != options.max_steps):  # >= 1 step
        rows = torch.randint(len(examples), (options.batch_size,), generator=gen)
        loss = _loss(model, examples, rows, ids, mask, labels, options)
        done = (time.monotonic() - start) / max(end - start, 1e-9)
        if options.max_steps:
            done = max(done, step / options.max_steps)
        for group in opt.param_groups:
            group["lr"] = _learning_rate(options, step, done)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if callback is not None:
            callback(step, model)
        if step % 20 == 0:
            elapsed = round(time.monotonic() - start)
            bar.n = elapsed if bar.total is None else min(bar.total, elapsed)
            bar.set_postfix_str(f"step {step} loss {loss.item():.3f}")
    bar.close()
    model.eval()
    return VQATrainResult(model, vocab, answers, step, time.monotonic() - start)


class VQAPredictor:
    """A trained model with its vocabulary and answers: answers, points and maps for questions."""

    def __init__(self, model: VQAModel, vocab: Vocabulary, answers: list[str], grounding: str):
        check_grounding(grounding)  # a bad choice fails here, not when the model is saved and used
        self.model, self.vocab, self.answers, self.grounding = (
            model.eval(),
            vocab,
            answers,
            grounding,
        )

    @torch.no_grad()
    def predict(self, examples: VQAExamples, batch_size: int = 256) -> list[dict[str, Any]]:
        """One ``{"answer", "point", "map"}`` per question, in order; ``point`` is (x, y) in the
        original image's pixels, ``map`` the (grid, grid) grounding map as nested lists."""
        batch_size = _checks.positive_int(batch_size, "batch_size")
        grid = self.model.config.grid
        out: list[dict[str, Any]] = []
        for lo in range(0, len(examples), batch_size):
            rows = torch.arange(lo, min(lo + batch_size, len(examples)))
            ids, mask = encode_questions(self.vocab, [examples.questions[r] for r in rows.tolist()])
            res = self.model(question_images(examples, rows), ids, mask, return_maps=True)
            maps = grounding_map(res.maps, res.map_mask, self.grounding).reshape(-1, grid, grid)
            for k, r in enumerate(rows.tolist()):
                m = maps[k].double().numpy()
                x, y = map_point(m, examples.original_sizes[r])
                out.append({
                    "answer": self.answers[int(res.logits[k].argmax())],
                    "point": [x, y],
                    "map": [[round(float(v), 6) for v in row] for row in m],
                })  # fmt: skip
        return out


def save_vqa(
    directory: str | os.PathLike, predictor: VQAPredictor, extra: dict | None = None
) -> Path:
    """Write the model directory atomically: a temporary sibling, then a rename into place."""
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_model(predictor.model, str(tmp / WEIGHTS_FILE))
        meta = {
            "config": predictor.model.config.to_dict(),
            "vocab": predictor.vocab.tokens,
            "answers": predictor.answers,
            "grounding": predictor.grounding,
            **(extra or {}),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for p in tmp.iterdir():
            p.chmod(0o644)
        tmp.chmod(0o755)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_vqa(directory: str | os.PathLike) -> VQAPredictor:
    """Read a directory written by `save_vqa`."""
    from safetensors.torch import load_model

    d = Path(directory)
    for name in (WEIGHTS_FILE, META_FILE):
        if not (d / name).is_file():
            raise FileNotFoundError(
                f"{d / name} is missing: is {d} a model of crossattn vqa train?"
            )
    meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
    model = VQAModel(VQAConfig.from_dict(meta["config"]))
    load_model(model, str(d / WEIGHTS_FILE))
    return VQAPredictor(model, Vocabulary(meta["vocab"]), list(meta["answers"]), meta["grounding"])


def score(predictions: Sequence[dict], examples: VQAExamples) -> dict[str, Any]:
    """Accuracy (when answers are known) and pointing game (when boxes are known)."""
    out: dict[str, Any] = {"n": len(predictions)}
    if examples.answers is not None:
        hits = [p["answer"] == a for p, a in zip(predictions, examples.answers)]
        out["accuracy"] = float(np.mean(hits)) if hits else math.nan
        out["majority_baseline"] = Counter(examples.answers).most_common(1)[0][1] / len(examples)
    scored = [(p, b) for p, b in zip(predictions, examples.boxes) if b is not None]
    if scored:
        inside = [b[0] <= p["point"][0] < b[2] and b[1] <= p["point"][1] < b[3] for p, b in scored]
        out["pointing_game"] = float(np.mean(inside))
    return out
