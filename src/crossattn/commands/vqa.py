"""`crossattn vqa train|answer|score`: a question-answering model that shows where it looks.

* ``train --data train.jsonl --out DIR [--minutes 4] [--guided-grounding]``: trains a `VQAModel`
  on the JSONL data (see `crossattn.data.vqa`) and writes the model directory atomically; the
  whole command, data loading included, keeps to ``--minutes``. An existing ``--out`` is refused
  unless ``--overwrite``.
* ``answer --model DIR --data test.jsonl``: one JSON line per question, in order:
  ``{"answer": str, "point": [x, y], "map": [[...]]}``, ``point`` in the original image's pixels.
* ``score --model DIR --data test.jsonl``: accuracy and pointing game (lines need answers; boxes
  are optional) as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..cli import CommandError, add_threads_argument, input_errors, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fmt = parser.formatter_class  # every action's --help shows its defaults too
    train = sub.add_parser("train", help="train a model on VQA JSONL data", formatter_class=fmt)
    train.add_argument(
        "--data", required=True, help="training JSONL (image, question, answer, box)"
    )  # noqa: E501
    train.add_argument("--out", required=True, help="model directory to write")
    train.add_argument("--minutes", type=positive_float, default=4.0,
                       help="time for the whole command, data loading included (default: 4)")  # fmt: skip
    train.add_argument("--guided-grounding", action="store_true",
                       help="supervise one head with the boxes (default: off)")  # fmt: skip
    train.add_argument("--overwrite", action="store_true",
                       help="replace an existing --out directory (default: refuse)")  # fmt: skip
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_threads_argument(train)
    for name, text in (("answer", "answer questions: one JSON line each"),
                       ("score", "accuracy and pointing game on labelled data")):  # fmt: skip
        p = sub.add_parser(name, help=text, formatter_class=fmt)
        p.add_argument("--model", required=True, help="model directory of crossattn vqa train")
        p.add_argument("--data", required=True, help="JSONL questions (answer and box optional)")
        p.add_argument("--batch-size", type=positive_int, default=256,
                       help="questions per forward pass (default: 256)")  # fmt: skip
        add_threads_argument(p)


def _read(path: str, size: int, need_answer: bool):
    from ..data.vqa import read_vqa_jsonl
    from ..training.vqa import examples_from_records

    with input_errors("argument --data"):
        records = read_vqa_jsonl(path, size=size, require_answer=need_answer)
        if not records:
            raise ValueError(f"{path} holds no question")
        return examples_from_records(records)


def _load(path: str):
    from ..training.vqa import load_vqa

    if not os.path.isdir(path):
        raise CommandError(f"argument --model: no such directory: {path!r}; expected a model "
                           "directory written by crossattn vqa train")  # fmt: skip
    with input_errors("argument --model", (ValueError, KeyError, OSError, RuntimeError)):
        return load_vqa(path)


def _train(args: argparse.Namespace, start: float) -> int:
    from ..training.vqa import (
        ANSWERS_ONLY_GROUNDING,
        VQAOptions,
        VQAPredictor,
        choose_head,
        save_vqa,
        train_vqa,
    )
    from ._common import check_output_dir

    check_output_dir(args.out)
    if os.path.exists(args.out) and os.listdir(args.out) and not args.overwrite:
        raise CommandError(f"argument --out: {args.out!r} already exists and is not empty; "
                           "pass --overwrite to replace it, or choose another directory")  # fmt: skip
    examples = _read(args.data, 64, need_answer=True)
    if args.guided_grounding and examples.targets is None:
        raise CommandError("argument --guided-grounding: every line of --data needs a 'box'")
    deadline = start + args.minutes * 60 - min(5.0, args.minutes * 6)  # time to save
    options = VQAOptions(seconds=args.minutes * 60, guided_grounding=args.guided_grounding,
                         seed=args.seed)  # fmt: skip
    result = train_vqa(examples, options, deadline=deadline, progress=True)
    extra: dict = {"steps": result.steps}
    if args.guided_grounding:
        grounding = "guided"
    else:  # the smoothed mean; each candidate map's information on training data, for reference
        grounding = ANSWERS_ONLY_GROUNDING
        extra["map_information"] = choose_head(result.model, result.vocab, examples)[1]
    predictor = VQAPredictor(result.model, result.vocab, result.answers, grounding)
    with input_errors("argument --out", (OSError,)):
        save_vqa(args.out, predictor, extra)
    print(f"crossattn vqa train: {result.steps} steps in {result.seconds:.0f} s; model in "
          f"{args.out}", file=sys.stderr)  # fmt: skip
    return 0


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    from ..training import choose_threads

    choose_threads(args.threads)
    if args.action == "train":
        return _train(args, start)
    predictor = _load(args.model)
    examples = _read(args.data, predictor.model.config.image_size, args.action == "score")
    predictions = predictor.predict(examples, batch_size=args.batch_size)
    if args.action == "answer":
        for p in predictions:
            sys.stdout.write(json.dumps(p) + "\n")
        return 0
    from ..training.vqa import score

    print(json.dumps(score(predictions, examples), indent=2))
    return 0
