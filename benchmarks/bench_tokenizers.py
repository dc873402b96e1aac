"""Train the demo's translator with a word or a subword tokenizer and score it in words.

The corpus, model and budget are those of `crossattn demo` (toy corpus of seed 0: 20,000
training pairs of 3 to 20 words with gold alignments, 500 test pairs; the default model; a
wall-clock budget for the training loop); only the tokenizer differs. It prints and writes (JSON
and a markdown row) the test exact match and corpus BLEU of greedy translations, and the AER of
the word links read off the cross-attention of the force-decoded references (a word pair is
linked when any of their subword pairs is), with the extraction chosen on held-out training
pairs and with `DEFAULT_EXTRACTION`.

    python benchmarks/bench_tokenizers.py --tokenizer bpe --vocab-size 500 --minutes 4
    python benchmarks/bench_tokenizers.py --tokenizer word --steps 1000

Results: docs/tokenizers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", choices=("word", "bpe", "unigram"), default="bpe")
    p.add_argument(
        "--vocab-size", type=int, default=None, help="tokens per side (default: the kind's)"
    )
    p.add_argument("--minutes", type=float, default=4.0, help="training-loop budget (default 4)")
    p.add_argument("--steps", type=int, default=None, help="train this many steps instead")
    p.add_argument("--train-pairs", type=int, default=20000)
    p.add_argument("--eval-pairs", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench-tokenizers", help="output folder")
    args = p.parse_args(argv)

    import sacrebleu

    from crossattn.align import DEFAULT_EXTRACTION, aer
    from crossattn.data.toy_translation import generate_corpus, write_corpus
    from crossattn.models import Translator
    from crossattn.training import TrainOptions, choose_threads, train

    threads = choose_threads(args.threads)
    budget = f"{args.steps}steps" if args.steps else f"{args.minutes:g}min"
    out = Path(args.out) / f"{args.tokenizer}-{args.vocab_size or 'default'}-{budget}"
    corpus = generate_corpus(args.seed, n_train=args.train_pairs, n_dev=args.eval_pairs,
                             n_test=args.eval_pairs, max_len=20)  # fmt: skip
    paths = write_corpus(corpus, out / "data")
    opts = TrainOptions(
        data=str(paths["train"]), alignments=str(paths["train_align"]), out=str(out / "model"),
        minutes=None if args.steps else args.minutes, steps=args.steps, seed=args.seed,
        tokenizer=args.tokenizer, vocab_size=args.vocab_size, eval_seconds=1e9, save_seconds=1e9, progress=False,
    )  # fmt: skip
    result = train(opts)
    tr = Translator.load(out / "model")
    test = corpus.test
    t0 = time.perf_counter()
    hyps = [r.translation for r in tr.translate_batch([e.source for e in test], beam=1)]
    refs = [" ".join(e.target) for e in test]
    chosen = tr.align_batch([e.source for e in test], [e.target for e in test])
    tr.extraction = DEFAULT_EXTRACTION
    default = tr.align_batch([e.source for e in test], [e.target for e in test])
    row = {
        "tokenizer": args.tokenizer,
        "vocab": [len(tr.source_vocab), len(tr.target_vocab)],
        "tokens_per_word": _tokens_per_word(tr, test),
        "train_steps": result.steps,
        "train_minutes": result.seconds / 60,
        "threads": threads,
        "test_exact_match": sum(h == r for h, r in zip(hyps, refs)) / len(refs),
        "test_bleu": float(sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score),
        "test_aer": aer(test, [r.alignment for r in chosen]).aer,
        "test_aer_default_extraction": aer(test, [r.alignment for r in default]).aer,
        "eval_seconds": time.perf_counter() - t0,
        "load_average": os.getloadavg(),
    }
    (out / "result.json").write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row))
    print("| tokenizer | vocab (src/tgt) | tokens per word | steps | exact match | BLEU | AER | "
          "AER default |", file=sys.stderr)  # fmt: skip
    print(f"| {row['tokenizer']} | {row['vocab'][0]}/{row['vocab'][1]} | "
          f"{row['tokens_per_word']:.2f} | {row['train_steps']} | "
          f"{row['test_exact_match']:.1%} | {row['test_bleu']:.1f} | {row['test_aer']:.1%} | "
          f"{row['test_aer_default_extraction']:.1%} |", file=sys.stderr)  # fmt: skip
    return 0


def _tokens_per_word(tr, examples) -> float:
    tokens = sum(len(tr.target_tokenizer.encode(e.target)) for e in examples)
    return tokens / sum(len(e.target) for e in examples)


if __name__ == "__main__":
    sys.exit(main())
