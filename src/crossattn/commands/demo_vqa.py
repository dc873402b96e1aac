"""`crossattn demo --task vqa`: train on generated scenes and score where the questions look.

Generates scenes with exact object masks (`crossattn.data.toy_scenes`), trains two `VQAModel`
side by side within the budget (one on answers alone, one with ``guided_grounding``; the first
grounds with the mean map over layers, heads and question words, blurred by one patch), then
measures on unseen scenes: answer accuracy, the pointing game of each model's grounding map, the
attention mass in the object over its area, and the same scores for the uniform, shuffled-image
and random-weights baselines. Writes ``metrics.json``, overlays as PNG and a viewer page into
the output folder.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

TRAIN_QUESTIONS = 20_000
TEST_QUESTIONS = 500
SHOWN = 4
EVALUATION_SECONDS = 25  # of the budget: scoring, baselines, pictures and the viewer


def _evaluate(predictor: Any, examples: Any, masks: list) -> dict[str, Any]:
    import numpy as np

    from ..grounding import grounding_report
    from ..training.vqa import score

    predictions = predictor.predict(examples)
    scores = score(predictions, examples)
    maps = np.array([p["map"] for p in predictions])
    report = grounding_report(maps, masks=masks, image_size=examples.original_sizes[0])
    boxes = grounding_report(maps, examples.boxes, image_size=examples.original_sizes[0])
    return {
        "accuracy": scores["accuracy"],
        "majority_baseline": scores["majority_baseline"],
        "pointing_game": boxes["pointing_game"],
        "pointing_game_mask": report["pointing_game"],
        "mass_over_area": report["mass_over_area"],
        "baselines": {
            "uniform": boxes["uniform"]["pointing_game"],
            "shuffled": boxes["shuffled"]["pointing_game"],
            "shuffled_mass_over_area": report["shuffled"]["mass_over_area"],
        },
        "predictions": predictions,
    }


def _random_weights(result: Any, examples: Any, grounding: str, masks: list) -> dict[str, float]:
    import torch

    from ..models.vqa import VQAModel
    from ..training.vqa import VQAPredictor

    torch.manual_seed(12345)
    untrained = VQAModel(result.model.config)
    ev = _evaluate(
        VQAPredictor(untrained, result.vocab, result.answers, grounding), examples, masks
    )
    return {"pointing_game": ev["pointing_game"], "mass_over_area": ev["mass_over_area"]}


def _pictures(out: Path, examples: Any, runs: dict[str, dict]) -> list[str]:
    import numpy as np

    from ..viz import image_overlay

    written = []
    for k in range(min(SHOWN, len(examples))):
        image = examples.images[examples.image_index[k]].permute(1, 2, 0).numpy()
        for name, ev in runs.items():
            grid = np.array(ev["predictions"][k]["map"]).reshape(-1, 1)  # (P, 1): one "token"
            path = out / f"overlay-{k}-{name}.png"
            title = f"{name}: answers {ev['predictions'][k]['answer']}"
            question = " ".join(examples.questions[k])
            image_overlay(grid, image, (8, 8), 0, tokens=[question], path=path, title=title)
            written.append(path.name)
    return written


def _viewer(out: Path, examples: Any, runs: dict[str, dict], shown: int = 12) -> str:
    """``viewer.html``: the first test questions over their images, each model's maps (every
    layer and head) and the object's box; returns the file name."""
    import torch

    from ..training.vqa import encode_questions, question_images
    from ..viz import batch_examples, to_html

    rows = torch.arange(min(shown, len(examples)))
    items = []
    for name, ev in runs.items():
        predictor = ev["predictor"]
        questions = [examples.questions[r] for r in rows.tolist()]
        ids, mask = encode_questions(predictor.vocab, questions)
        with torch.no_grad():
            res = predictor.model(question_images(examples, rows), ids, mask, return_maps=True)
        one_row = predictor.model.config.readout == "query"  # one query reads the question
        tokens = [[" ".join(q)] if one_row else list(q) for q in questions]
        answers = [ev["predictions"][r]["answer"] for r in rows.tolist()]
        items += batch_examples(
            res.maps, tokens, images=examples.images, image_index=examples.image_index[rows],
            boxes=[examples.boxes[r] for r in rows.tolist()],
            box_sizes=[examples.original_sizes[r] for r in rows.tolist()],
            titles=[f"{name} {k}: {' '.join(q)}" for k, q in enumerate(questions)],
            captions=[f"answer: {a}" for a in answers],
        )  # fmt: skip
    to_html(items, path=out / "viewer.html", title="crossattn demo --task vqa")
    return "viewer.html"


def _line(name: str, ev: dict) -> str:
    return (
        f"  {name:<12} accuracy {100 * ev['accuracy']:5.1f}%  pointing game "
        f"{100 * ev['pointing_game']:5.1f}%  mass/area {ev['mass_over_area']:5.2f}  (random "
        f"weights {100 * ev['random_weights']['pointing_game']:4.1f}%)"
    )


class _Stopped(Exception):
    """Raised inside a training thread when the demo is interrupted."""


def _train_both(train: Any, seed: int, config: dict, seconds: float) -> dict[str, Any]:
    """Train the unsupervised and the guided model side by side, in two threads that split the
    torch threads (one each on a 2-core machine), so that each model gets the whole budget
    instead of half of it (on a busy machine two runnable threads also get twice the share of
    the cores); returns the training results by name. An interrupt stops both at their next step."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from ..training.vqa import VQAOptions, train_vqa

    threads = torch.get_num_threads()
    stop = threading.Event()

    def check(step: int, model: Any) -> None:
        if stop.is_set():
            raise _Stopped

    def one(guided: bool) -> Any:
        torch.set_num_threads(max(1, threads // 2))  # per thread: the two runs share the cores
        opts = VQAOptions(seconds=max(seconds, 1.0), guided_grounding=guided, seed=seed,
                          config=config)  # fmt: skip
        return train_vqa(train, opts, progress=not guided, callback=check)

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {name: pool.submit(one, guided)
                       for name, guided in (("unsupervised", False), ("guided", True))}  # fmt: skip
            try:
                return {name: f.result() for name, f in futures.items()}
            except BaseException:
                stop.set()
                raise
    finally:
        torch.set_num_threads(threads)


def run_vqa_demo(out: Path, minutes: float, seed: int, tiny: bool) -> int:
    """Train, evaluate and write the demo's outputs into ``out``; returns the exit status."""
    from ..training.vqa import ANSWERS_ONLY_GROUNDING, VQAPredictor, save_vqa, scene_questions

    start = time.monotonic()
    end = start + minutes * 60
    train = scene_questions(200 if tiny else TRAIN_QUESTIONS, seed)
    test = scene_questions(50 if tiny else TEST_QUESTIONS, seed + 1)
    masks = test.masks
    print(f"crossattn demo --task vqa: {len(train)} training and {len(test)} test questions "
          f"({time.monotonic() - start:.0f} s)", file=sys.stderr)  # fmt: skip
    config = {"d_model": 32, "dim_ff": 64} if tiny else {}
    seconds = end - time.monotonic() - (5 if tiny else EVALUATION_SECONDS)
    results = _train_both(train, seed, config, seconds)
    runs: dict[str, dict] = {}
    for name, result in results.items():
        guided = name == "guided"
        grounding = "guided" if guided else ANSWERS_ONLY_GROUNDING
        predictor = VQAPredictor(result.model, result.vocab, result.answers, grounding)
        ev = _evaluate(predictor, test, masks)
        ev["random_weights"] = _random_weights(result, test, grounding, masks)
        ev["steps"] = result.steps
        ev["grounding"] = grounding
        runs[name] = ev
        save_vqa(out / f"model-{name}", predictor, {"steps": result.steps})
        ev["predictor"] = predictor
    pictures = _pictures(out, test, runs)
    pictures.append(_viewer(out, test, runs))
    metrics = {
        "task": "vqa",
        "train_questions": len(train),
        "test_questions": len(test),
        **{
            name: {k: v for k, v in ev.items() if k not in ("predictions", "predictor")}
            for name, ev in runs.items()
        },
        "pictures": pictures,
        "seconds": round(time.monotonic() - start, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print("\n".join(_line(name, ev) for name, ev in runs.items()))
    print(f"  uniform pointing game {100 * runs['guided']['baselines']['uniform']:.1f}%, "
          f"shuffled images {100 * runs['unsupervised']['baselines']['shuffled']:.1f}%; "
          f"{metrics['seconds']:.0f} s; outputs in {out}")  # fmt: skip
    return 0
