"""`crossattn demo`: train a small translator on the CPU and measure the alignment it learned.

Generates the toy English-to-French-like corpus (with gold word alignments), trains on it within
a wall-clock budget, then prints dev and test exact match, corpus BLEU and the AER of the
alignments read off the cross-attention against the gold; translates a few sentences; writes the
model, PNG heatmaps, the HTML viewer and ``metrics.json`` into the output folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..cli import CommandError, add_threads_argument, positive_float, positive_int
from ._common import REVERSE_DIR
from ._compute_type import add_compute_type_argument

SENTENCES = (
    "the cat sits here",
    "the red car is near the house",
    "the dog does not see the small cats",
    "three very old lions are polite with the lamp",
)


# The file that marks an output folder as written by `crossattn demo`, which a later demo may
# replace; any other folder that is not empty needs --overwrite.
MARKER = ".crossattn-demo"
TINY_BUDGET_MINUTES = 0.25  # a smoke test: the whole run, start-up included, well within 30 s


OUT_DEFAULTS = {"translation": "demo-out", "vqa": "demo-out-vqa"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        choices=tuple(OUT_DEFAULTS),
        default="translation",
        help="translation: a translator and its word alignment; vqa: question answering over "
        "generated scenes and where the questions look (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder; one that a demo wrote is replaced (default: demo-out, or "
        "demo-out-vqa with --task vqa)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --out that a demo did not write, replacing its files of the same "
        "names (default: off, refuse)",
    )
    parser.add_argument(
        "--guided-alignment",
        action="store_true",
        help="train one cross-attention head on the gold alignments, as Garg et al. 2019 "
        "(default: off)",
    )
    parser.add_argument(
        "--budget-minutes",
        type=positive_float,
        default=None,
        help="wall-clock budget of the whole run, training included (default: 4, or "
        f"{TINY_BUDGET_MINUTES} with --tiny)",
    )
    parser.add_argument(
        "--train-pairs",
        type=positive_int,
        default=20000,
        help="toy training pairs, always 600 with --tiny (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-pairs",
        type=positive_int,
        default=500,
        help="dev and test pairs each, always 60 with --tiny (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a smoke test of under 30 seconds: a tiny model and corpus, not a result "
        "(default: off)",
    )
    add_threads_argument(parser)
    add_compute_type_argument(parser)  # of the evaluation; training is float32


def check_out(args: argparse.Namespace) -> None:
    """--out is new, empty, written by an earlier demo, or --overwrite is given; and writable."""
    from ._common import check_output_dir
    from .train import check_writable_dir

    check_output_dir(args.out)
    if not args.overwrite and os.path.isdir(args.out) and os.listdir(args.out):
        if not _written_by_demo(args.out):
            raise CommandError(
                f"argument --out: {args.out!r} is not empty and was not written by crossattn "
                "demo; choose another --out, or pass --overwrite to write into it"
            )
    check_writable_dir(args.out)


def _written_by_demo(path: str) -> bool:
    """The marker, or the layout of a demo's output (metrics.json, model/ and data/)."""
    if os.path.isfile(os.path.join(path, MARKER)):
        return True
    return all(
        os.path.exists(os.path.join(path, name)) for name in ("metrics.json", "model", "data")
    )


def _clear_previous(out) -> None:
    """Remove the pictures, metrics and reverse model of an earlier demo in ``out`` (the model
    and the corpus are replaced as they are written)."""
    import shutil

    for path in [*out.glob("alignment_*.png"), out / "viewer.html", out / "metrics.json"]:
        if path.is_file():
            path.unlink()
    if (out / "model" / REVERSE_DIR).is_dir():
        shutil.rmtree(out / "model" / REVERSE_DIR)


def _train_reverse(opts, examples: list, threads: int, results) -> None:
    """The reverse direction in its own process (see `_train_directions`)."""
    import torch

    from ..training import train

    torch.set_num_threads(threads)
    results.put(train(opts, examples).steps)


def _train_directions(opts, examples: list, both: bool):
    """Train ``opts`` (source to target); with ``both``, a target-to-source model into
    ``OUT/reverse`` at the same time, in a second process: each gets half the threads (at least
    one) and the whole budget. Two one-thread processes on two cores make more steps each than
    half of a two-thread run, since small kernels gain little from a second thread.
    Returns (the forward `TrainResult`, the reverse model's step count or None)."""
    import dataclasses
    import multiprocessing
    import queue

    import torch

    from ..training import train

    if not both:
        return train(opts), None
    before = torch.get_num_threads()  # given back for the evaluation
    threads = max(1, before // 2)
    reverse = dataclasses.replace(opts, out=os.path.join(opts.out, REVERSE_DIR), progress=False)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds threads
    results = context.Queue()
    child = context.Process(
        target=_train_reverse,
        args=(reverse, [e.swapped() for e in examples], threads, results),
        daemon=True,
    )
    child.start()
    steps = None
    try:
        torch.set_num_threads(threads)
        result = train(opts, examples)
        while steps is None and (child.is_alive() or not results.empty()):
            try:
                steps = results.get(timeout=1.0)
            except queue.Empty:  # still training, or failed: is_alive() tells
                pass
    finally:
        torch.set_num_threads(before)
        child.join(timeout=30)
        if child.is_alive():
            child.terminate()
    if steps is None:
        raise CommandError(f"training the reverse model failed (exit status {child.exitcode})")
    return result, steps


def _bleu(hyps: list[str], refs: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score)


def run(args: argparse.Namespace) -> int:
    if args.out is None:
        args.out = OUT_DEFAULTS[args.task]
    try:
        return _run_vqa(args) if args.task == "vqa" else _run(args)
    except KeyboardInterrupt:
        print(
            f"crossattn demo: interrupted; {args.out!r} is incomplete: run the demo again to "
            "write it anew",
            file=sys.stderr,
        )
        return 130
    except OSError as err:  # a disk that fills up, a folder made read-only meanwhile
        raise CommandError(f"cannot write the demo's output in {args.out!r}: {err}") from err


def _run_vqa(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..training import choose_threads
    from .demo_vqa import run_vqa_demo

    if args.guided_alignment:
        raise CommandError("argument --guided-alignment: a translation option; --task vqa "
                           "trains a guided-grounding model beside the unsupervised one")  # fmt: skip
    check_out(args)
    choose_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by crossattn demo, which may replace this folder\n")
    minutes = args.budget_minutes or (TINY_BUDGET_MINUTES if args.tiny else 4.0)
    return run_vqa_demo(out, minutes, args.seed, args.tiny)


def _run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    from pathlib import Path

    from ..align import alignment_scores
    from ..data.toy_translation import generate_corpus, write_corpus
    from ..models import Translator
    from ..training import TrainOptions, choose_threads, write_json
    from ._compute_type import check_compute_type_runs

    check_out(args)
    check_compute_type_runs(args.compute_type)
    choose_threads(args.threads)

    budget = 60.0 * (args.budget_minutes or (TINY_BUDGET_MINUTES if args.tiny else 4.0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by crossattn demo, which may replace this folder\n")
    _clear_previous(out)
    n_eval = 60 if args.tiny else args.eval_pairs
    corpus = generate_corpus(
        args.seed,
        n_train=600 if args.tiny else args.train_pairs,
        n_dev=n_eval,
        n_test=n_eval,
        max_len=12 if args.tiny else 20,
    )
    paths = write_corpus(corpus, out / "data")
    print(
        f"toy corpus: {len(corpus.train)} training pairs, {len(corpus.dev)} dev, "
        f"{len(corpus.test)} test, written to {out / 'data'}",
        flush=True,
    )
    # Reserve time for evaluation, pictures and saving after the training loop.
    reserve = 8.0 if args.tiny else 25.0
    minutes = max(0.05, (budget - (time.perf_counter() - t_start) - reserve) / 60.0)
    opts = TrainOptions(
        data=str(paths["train"]),
        alignments=str(paths["train_align"]),
        out=str(out / "model"),
        minutes=minutes,
        seed=args.seed,
        guided_alignment=args.guided_alignment,
        eval_seconds=1e9,  # one dev evaluation at the end
        save_seconds=1e9,
        overwrite=True,  # the model of an earlier demo
        progress=sys.stderr.isatty(),
    )
    if args.tiny:
        opts.d_model, opts.dim_ff, opts.encoder_layers, opts.decoder_layers = 32, 64, 1, 2
        opts.batch_tokens, opts.warmup, opts.dev_size = 800, 20, 60
    both = not args.guided_alignment  # guided: one direction, its head needs no second model
    print(f"training for at most {minutes:.2f} min (guided alignment: {args.guided_alignment})"
          + ("; source-to-target and target-to-source at the same time" if both else ""))  # fmt: skip
    result, reverse_steps = _train_directions(opts, corpus.train, both)
    tr = Translator.load(out / "model", compute_type=args.compute_type)
    rev = Translator.load(out / "model" / REVERSE_DIR, compute_type=args.compute_type) if both else None  # fmt: skip
    metrics = _evaluate(tr, corpus, rev)

    # ---- a few translations, heatmaps and the viewer ----
    print()
    shown = []
    for k, sentence in enumerate(SENTENCES):
        r = tr.translate(sentence, beam=4)
        pairs_txt = ", ".join(f"{r.source_tokens[i]}={r.target_tokens[j]}" for i, j in r.alignment)
        print(f"{sentence}  ->  {r.translation}")
        print(f"    alignment: {pairs_txt}")
        scores = alignment_scores(r.decoder_attention, tr.extraction, len(r.source_tokens),
                                  len(r.target_tokens)) if r.target_tokens else None  # fmt: skip
        shown.append((k, r, scores))
    pictures = _pictures(out, shown)
    metrics.update({
        "aer": metrics["test_aer"],
        "guided_alignment": bool(args.guided_alignment),
        "train_steps": result.steps,
        "reverse_train_steps": reverse_steps,
        "train_minutes": minutes,
        "extraction": tr.extraction.to_dict(),
        "translations": {s: r.translation for s, (_, r, _) in zip(SENTENCES, shown)},
        "tiny": bool(args.tiny),
    })  # fmt: skip
    metrics["seconds"] = time.perf_counter() - t_start
    write_json(out / "metrics.json", metrics)
    print()
    print(
        f"wrote {', '.join(str(w) for w in (out / 'model', pictures, out / 'metrics.json') if w)}"
    )
    print(f"total {metrics['seconds']:.0f} s")
    return 0


def _links(tr, examples: list, *, swap: bool = False) -> tuple[list, list]:
    """(the model's extraction, `DEFAULT_EXTRACTION`) links of each force-decoded gold pair, as
    (source, target) sets; ``swap``: ``tr`` is target to source, its links flipped back."""
    from ..align import DEFAULT_EXTRACTION, extract_alignment
    from ..data.pharaoh import flip_links
    from ..training import Encoded, attention_for_pairs

    sides = [(e.target, e.source) if swap else (e.source, e.target) for e in examples]
    pairs = [
        Encoded(tuple(tr.source_vocab.encode(a)), tuple(tr.target_vocab.encode(b)), frozenset())
        for a, b in sides
    ]
    weights = attention_for_pairs(tr.model, pairs)
    out = []
    for config in (tr.extraction, DEFAULT_EXTRACTION):
        links = [extract_alignment(w, config, len(a), len(b)) for w, (a, b) in zip(weights, sides)]
        out.append([flip_links(x) if swap else set(x) for x in links])
    return out[0], out[1]


def _evaluate(tr, corpus, rev=None) -> dict[str, object]:
    """Dev and test: exact match and BLEU of the greedy translations, AER of the links of the
    force-decoded gold pairs (the chosen extraction and the default); with a reverse model
    ``rev``, each of the two is the grow-diag-final of the two directions (the forward model's
    own AERs under ``*_forward`` keys). Printed as a table."""
    from ..align import DEFAULT_EXTRACTION, aer
    from ..align.symmetrize import symmetrize

    metrics: dict[str, object] = {}
    rows = []
    for split in ("dev", "test"):
        examples = getattr(corpus, split)
        res = tr.translate_batch([e.source for e in examples], beam=1)
        hyps = [r.translation for r in res]
        refs = [" ".join(e.target) for e in examples]
        exact = sum(h == r for h, r in zip(hyps, refs)) / len(refs)
        chosen, default = _links(tr, examples)
        if rev is not None:
            metrics[f"{split}_aer_forward"] = aer(examples, chosen).aer
            metrics[f"{split}_aer_default_extraction_forward"] = aer(examples, default).aer
            r_chosen, r_default = _links(rev, examples, swap=True)
            chosen = [symmetrize(f, b) for f, b in zip(chosen, r_chosen)]
            default = [symmetrize(f, b) for f, b in zip(default, r_default)]
        a, a_default = aer(examples, chosen), aer(examples, default)
        bleu = _bleu(hyps, refs)
        metrics.update({
            f"{split}_exact_match": exact,
            f"{split}_bleu": bleu,
            f"{split}_aer": a.aer,
            f"{split}_aer_default_extraction": a_default.aer,
        })  # fmt: skip
        rows.append((split, len(examples), exact, bleu, a.aer, a_default.aer))
    print()
    print(f"{'split':<6}{'pairs':>6}{'exact match':>13}{'BLEU':>8}{'AER':>8}{'AER default':>13}")
    for split, n, exact, bleu, a, a_default in rows:
        print(f"{split:<6}{n:>6}{exact:>12.1%}{bleu:>9.1f}{a:>8.1%}{a_default:>13.1%}")
    both = (
        " of each direction, combined with grow-diag-final (the forward model alone: "
        f"{metrics['test_aer_forward']:.1%} and {metrics['test_aer_default_extraction_forward']:.1%} "
        "on test)"
        if rev is not None
        else ""
    )
    print(
        f"AER: links read off the cross-attention of the force-decoded reference; extraction "
        f"'{tr.extraction.describe()}' (chosen on a held-out split of the training data); "
        f"'AER default': {DEFAULT_EXTRACTION.describe()}, no gold used{both}."
    )
    return metrics


def _pictures(out, shown) -> str:
    """PNG heatmaps (and the HTML viewer when `crossattn.viz.to_html` exists)."""
    import sys

    try:
        from ..viz import heatmap
    except ImportError:  # a plain matplotlib picture
        heatmap = None
    written = []
    for k, r, scores in shown:
        if scores is None:
            continue
        path = out / f"alignment_{k}.png"
        if heatmap is not None:
            heatmap(scores, list(r.source_tokens), list(r.target_tokens), path=path,
                    predicted=r.alignment, title=r.translation)  # fmt: skip
        else:
            _plain_heatmap(scores, r, path)
        written.append(path.name)
    try:
        from ..viz import to_html
    except ImportError:
        print("the HTML viewer (crossattn.viz.to_html) is not available; skipped", file=sys.stderr)
        return f"{len(written)} heatmaps"
    nonempty = [r for _, r, scores in shown if scores is not None]
    if not nonempty:
        print("no sentence was translated to any word: no viewer written", file=sys.stderr)
    else:
        r = nonempty[0]
        to_html(r.weights, list(r.source_tokens), list(r.target_tokens),
                path=out / "viewer.html", title="crossattn demo",
                caption=f"{' '.join(r.source_tokens)} -> {r.translation}",
                predicted=r.alignment)  # fmt: skip
        written.append("viewer.html")
    return ", ".join(written)


def _plain_heatmap(scores, r, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(r.source_tokens), 1 + 0.5 * len(r.target_tokens)))
    ax.imshow(scores.numpy(), cmap="Blues", vmin=0)
    ax.set_xticks(range(len(r.source_tokens)), r.source_tokens, rotation=60)
    ax.set_yticks(range(len(r.target_tokens)), r.target_tokens)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
