"""`crossattn vqa` on scenes that `crossattn.data.toy_scenes` did not draw, read as JSONL.

``python benchmarks/vqa_jsonl.py --out DIR [--train 20000] [--test 500] [--minutes 4]`` draws
scenes with Pillow's own drawing (96 x 96 pixels, resized to the model's 64 by the reader;
anti-aliased shapes drawn at twice the size and reduced; a vertical background gradient with
noise; each colour's shade jittered; object sides drawn from ranges rather than two fixed
sizes), asks the three kinds of question the demo asks about objects named once, and writes
``train.jsonl`` and ``test.jsonl`` with PNG images and boxes (no masks). It then runs the
commands a user runs: ``crossattn vqa train`` twice side by side, one thread each (answers only
and ``--guided-grounding``, each bounded by ``--minutes``), and ``crossattn vqa score`` of each
model on the test file. Prints one JSON object with both scores, the step counts, the seconds
and the load average; the demo's figures are the ones to compare with.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIDE = 96
SHAPES = ("circle", "square", "triangle")
PALETTE = {
    "red": (205, 45, 50),
    "green": (50, 170, 70),
    "blue": (45, 90, 220),
    "yellow": (225, 200, 50),
    "purple": (140, 70, 180),
}
SIDES = {"small": (14, 18), "large": (26, 31)}  # pixels of the 96-pixel canvas


def _background(rng: np.random.Generator) -> np.ndarray:
    top, bottom = rng.uniform(90, 140, size=2)
    ramp = np.linspace(top, bottom, SIDE)[:, None, None]
    noise = rng.normal(0, 10, size=(SIDE, SIDE, 3))
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def _draw(canvas: Image.Image, shape: str, box: tuple[int, int, int, int], fill: tuple) -> None:
    """Draw at twice the resolution onto a mask, then paste the reduced (anti-aliased) mask."""
    x0, y0, x1, y1 = box
    w, h = (x1 - x0) * 2, (y1 - y0) * 2
    mask = Image.new("L", (w, h), 0)
    pen = ImageDraw.Draw(mask)
    if shape == "circle":
        pen.ellipse((0, 0, w - 1, h - 1), fill=255)
    elif shape == "square":
        pen.rectangle((0, 0, w - 1, h - 1), fill=255)
    else:
        pen.polygon([(w / 2, 0), (w - 1, h - 1), (0, h - 1)], fill=255)
    mask = mask.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    canvas.paste(Image.new("RGB", mask.size, fill), (x0, y0), mask)


def _objects(rng: np.random.Generator) -> list[dict]:
    """2 to 5 objects with non-overlapping boxes (two pixels apart)."""
    want, placed = int(rng.integers(2, 6)), []
    for _ in range(300):
        if len(placed) == want:
            break
        size = ("small", "large")[int(rng.integers(2))]
        side = int(rng.integers(SIDES[size][0], SIDES[size][1] + 1))
        x0, y0 = (int(v) for v in rng.integers(2, SIDE - side - 2, size=2))
        box = (x0, y0, x0 + side, y0 + side)
        if all(box[2] + 2 <= o["box"][0] or o["box"][2] + 2 <= box[0] or box[3] + 2 <= o["box"][1]
               or o["box"][3] + 2 <= box[1] for o in placed):  # fmt: skip
            colour = list(PALETTE)[int(rng.integers(len(PALETTE)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            placed.append({"box": box, "size": size, "colour": colour, "shape": shape})
    return placed


def _questions(objects: list[dict]) -> list[tuple[str, str, list[int]]]:
    out = []
    for o in objects:

        def count(*keys: str, o: dict = o) -> int:
            return sum(all(p[k] == o[k] for k in keys) for p in objects)

        if count("shape") == 1:
            out.append((f"what colour is the {o['shape']} ?", o["colour"], list(o["box"])))
        if count("colour") == 1:
            out.append((f"what shape is the {o['colour']} object ?", o["shape"], list(o["box"])))
        if count("shape", "colour") == 1:
            out.append((f"is the {o['colour']} {o['shape']} small or large ?", o["size"],
                        list(o["box"])))  # fmt: skip
    return out


def write_split(folder: Path, name: str, questions: int, seed: int) -> Path:
    """Draw scenes until ``questions`` questions; write ``name.jsonl`` and its PNG images."""
    rng = np.random.default_rng(seed)
    images = folder / f"{name}-images"
    images.mkdir(parents=True, exist_ok=True)
    lines, k = [], 0
    while len(lines) < questions:
        objects = _objects(rng)
        canvas = Image.fromarray(_background(rng))
        for o in objects:
            jitter = rng.integers(-15, 16, size=3)
            fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(PALETTE[o["colour"]], jitter))
            _draw(canvas, o["shape"], o["box"], fill)
        path = images / f"{k:05d}.png"
        canvas.save(path)
        for question, answer, box in _questions(objects)[: questions - len(lines)]:
            lines.append({"image": f"{images.name}/{path.name}", "question": question,
                          "answer": answer, "box": box})  # fmt: skip
        k += 1
    out = folder / f"{name}.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the data and the two models")
    p.add_argument("--train", type=int, default=20_000, help="training questions")
    p.add_argument("--test", type=int, default=500, help="test questions")
    p.add_argument("--minutes", type=float, default=4.0, help="each vqa train's --minutes")
    args = p.parse_args()
    out = Path(args.out)
    train = write_split(out, "train", args.train, seed=1000)
    test = write_split(out, "test", args.test, seed=2000)
    cli = [sys.executable, "-m", "crossattn", "vqa"]
    load = [os.getloadavg()]
    start = time.monotonic()
    runs = {"answers_only": [], "guided": ["--guided-grounding"]}
    procs = {
        name: subprocess.Popen(
            cli
            + [
                "train",
                "--data",
                str(train),
                "--out",
                str(out / name),
                "--minutes",
                str(args.minutes),
                "--threads",
                "1",
                "--overwrite",
                *flags,
            ]
        )  # fmt: skip
        for name, flags in runs.items()
    }
    if any(proc.wait() for proc in procs.values()):
        raise SystemExit("crossattn vqa train failed")
    load.append(os.getloadavg())
    result = {"train_questions": args.train, "test_questions": args.test,
              "train_seconds": round(time.monotonic() - start, 1)}  # fmt: skip
    for name in runs:
        scored = subprocess.run(cli + ["score", "--model", str(out / name), "--data", str(test)],
                                check=True, capture_output=True, text=True)  # fmt: skip
        meta = json.loads((out / name / "vqa.json").read_text(encoding="utf-8"))
        result[name] = {**json.loads(scored.stdout), "steps": meta.get("steps")}
    result["load_average"] = [round(v[0], 2) for v in load]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
