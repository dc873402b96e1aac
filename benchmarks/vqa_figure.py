"""Where trained VQA models look: one figure, a row per test question, a column per model.

``python benchmarks/vqa_figure.py --model NAME=DIR [--model NAME=DIR ...] --out FILE.png``
loads model directories written by `crossattn vqa train` or `crossattn demo --task vqa`, answers
the first ``--questions`` test questions of the demo (seed ``--seed`` + 1, the demo's test set)
and draws, for each model, the grounding map it points with over the image: the object's box
dashed, the point (the centre of the most-attended patch) as a cross, green on the object and red
off it, and the answer in the panel's title. The first questions are drawn as they come, hits
and misses alike. The figure in ``docs/vqa.md`` was made with

    python benchmarks/vqa_figure.py --questions 4 --out docs/img/vqa-maps.png \\
        --model "whole-patch keys=DIR1" --model "centre keys=DIR2" \\
        --model "the default=DIR3/model-unsupervised" --model "guided=DIR3/model-guided"

where DIR3 is a `crossattn demo --task vqa` output, and DIR1 and DIR2 answers-only models trained
as that demo's but with ``VQAOptions(config=...)`` ``{"stem": "linear", "values": "wide",
"local_heads": 0}`` and ``{"stem": "centre", "values": "wide", "local_heads": 0}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _panel(ax, image, grid, box, point, hit, title) -> None:
    """The image, the map stretched over it, the box and the point (green for a hit), on one
    axis."""
    from matplotlib.patches import Rectangle

    height, width = image.shape[:2]
    ax.imshow(image)
    ax.imshow(grid, extent=(0, width, height, 0), cmap="magma", alpha=0.55, interpolation="nearest")
    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", lw=1.5, ec="white"))
    ax.plot(*point, marker="x", ms=10, mew=3, color="#2ca02c" if hit else "#d62728")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="NAME=DIR, repeatable")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--questions", type=int, default=4, help="test questions, one row each")
    p.add_argument("--seed", type=int, default=0, help="the demo's seed (test set: seed + 1)")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crossattn.grounding import pointing_game
    from crossattn.training.vqa import load_vqa, scene_questions

    models = [m.split("=", 1) for m in args.model]
    if any(len(m) != 2 for m in models):
        p.error("--model takes NAME=DIR")
    test = scene_questions(args.questions, args.seed + 1)
    fig, axes = plt.subplots(
        len(test), len(models), figsize=(2.6 * len(models), 2.9 * len(test)), squeeze=False
    )
    for col, (name, directory) in enumerate(models):
        predictions = load_vqa(Path(directory)).predict(test)
        maps = [np.array(pred["map"]) for pred in predictions]
        hits = pointing_game(maps, test.boxes, image_size=test.original_sizes)
        for row, pred in enumerate(predictions):
            image = test.images[test.image_index[row]].permute(1, 2, 0).numpy()
            title = f"{name}\n-> {pred['answer']}"
            _panel(axes[row, col], image, maps[row], test.boxes[row], pred["point"], hits[row],
                   title)  # fmt: skip
        for row in range(len(test)):
            axes[row, 0].set_ylabel(" ".join(test.questions[row]), fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
