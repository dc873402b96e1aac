"""Steps to the VQA targets, and the time of one step, for `crossattn demo --task vqa` configs.

``python benchmarks/bench_vqa.py steps --steps 600 --every 200 [--guided] [--config JSON]``
trains one model for a fixed number of optimizer steps and, every ``--every`` steps, scores it on
unseen scenes: answer accuracy and the pointing game of the mean map, the supervised head and
every single head, with each map's information on training questions (the unsupervised choice).
``python benchmarks/bench_vqa.py time [--config JSON]`` times training steps (medians of
repeats) for the unsupervised and the guided model. Both print JSON lines with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from crossattn.grounding import pointing_game
from crossattn.models.vocab import Vocabulary
from crossattn.models.vqa import VQAConfig, VQAModel
from crossattn.training.vqa import (
    VQAOptions,
    _loss,
    encode_questions,
    grounding_map,
    map_information,
    question_images,
    scene_questions,
    train_vqa,
)


@torch.no_grad()
def _maps(model, vocab, ex):
    rows = torch.arange(len(ex))
    ids, mask = encode_questions(vocab, ex.questions)
    res = model(question_images(ex, rows), ids, mask, return_maps=True)
    return res


def _evaluate(model, vocab, answers, train, test) -> dict:
    model.eval()
    res = _maps(model, vocab, test)
    labels = torch.tensor([answers.index(a) if a in answers else -1 for a in test.answers])
    out = {"accuracy": float((res.logits.argmax(1) == labels).float().mean())}
    heads = res.maps[0].shape[1]
    choices = ["mean", "smoothed", "guided"] + [
        f"head:{layer}:{h}" for layer in range(len(res.maps)) for h in range(heads)
    ]
    tr = _maps(model, vocab, train)
    for c in choices:
        m = grounding_map(res.maps, res.map_mask, c).reshape(-1, 8, 8)
        hits = pointing_game(m, test.boxes, image_size=(64, 64))
        info = map_information(grounding_map(tr.maps, tr.map_mask, c))
        out[c] = (round(sum(hits) / len(hits), 3), round(info, 2))
    model.train()
    return out


def steps(args) -> None:
    train = scene_questions(args.train, 0)
    test = scene_questions(args.test, 1)
    probe = train.subset(range(256))
    config = json.loads(args.config)
    opts = VQAOptions(
        seconds=1e9, max_steps=args.steps, batch_size=args.batch, lr=args.lr,
        warmup=args.warmup, guided_grounding=args.guided, guided_weight=args.weight,
        label_smoothing=args.smoothing, config=config,
    )  # fmt: skip
    vocab = Vocabulary.build(train.questions)
    answers = sorted(set(train.answers))
    start = time.monotonic()

    def callback(step, model):
        if step % args.every == 0 or step == args.steps:
            ev = _evaluate(model, vocab, answers, probe, test)
            ev.update(step=step, seconds=round(time.monotonic() - start), load=os.getloadavg())
            print(json.dumps(ev), flush=True)

    print(json.dumps({"config": config, "options": {k: v for k, v in vars(args).items()}}))
    train_vqa(train, opts, callback=callback)


def timing(args) -> None:
    train = scene_questions(2000, 0)
    config = json.loads(args.config)
    vocab = Vocabulary.build(train.questions)
    answers = sorted(set(train.answers))
    ids, mask = encode_questions(vocab, train.questions)
    labels = torch.tensor([answers.index(a) for a in train.answers])
    gen = torch.Generator().manual_seed(0)
    result = {}
    for guided in (False, True, False, True):
        opts = VQAOptions(batch_size=args.batch, guided_grounding=guided, config=config)
        model = VQAModel(VQAConfig(vocab_size=len(vocab), n_answers=len(answers), **config))
        model.train_convolutions_in_bfloat16()  # as train_vqa does
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        times = []
        for k in range(args.repeats + 2):
            rows = torch.randint(len(train), (args.batch,), generator=gen)
            t = time.perf_counter()
            loss = _loss(model, train, rows, ids, mask, labels, opts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if k >= 2:
                times.append(time.perf_counter() - t)
        result.setdefault("guided" if guided else "unsupervised", []).extend(times)
    print(json.dumps({
        "config": config, "batch": args.batch, "threads": torch.get_num_threads(),
        **{k: round(statistics.median(v), 4) for k, v in result.items()},
        "load": os.getloadavg(),
    }))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=["steps", "time"])
    p.add_argument("--config", default="{}")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight", type=float, default=0.5)
    p.add_argument("--smoothing", type=float, default=0.0)
    p.add_argument("--guided", action="store_true")
    p.add_argument("--train", type=int, default=20_000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    (steps if args.mode == "steps" else timing)(args)


if __name__ == "__main__":
    main()
