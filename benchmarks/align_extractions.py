"""AER of each extraction and symmetrisation of a source-to-target and a target-to-source model.

Usage::

    python benchmarks/align_extractions.py --model M --reverse-model M/reverse \
        --test DIR/test.txt --gold DIR/test.align --dev DIR/dev.txt --dev-gold DIR/dev.align \
        --json out.json

Rows: the forward model with today's extraction (predict row, bidirectional >= 0.3), the
shifted readings (feed, average), the reverse model alone, each symmetrisation of the two, the
extraction chosen without gold by the agreement of the directions (on the dev pairs, gold not
read), and the gold-tuned extraction (`select_extraction` on the dev gold) for comparison.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace


def _read(text_path, gold_path):
    from crossattn.data.parallel import read_parallel

    return read_parallel(text_path, alignments=gold_path).examples


def _links(results, config, swap=False):
    from crossattn.align import extract_alignment
    from crossattn.data.pharaoh import flip_links

    out = []
    for r in results:
        ns, nt = len(r.source_tokens), len(r.target_tokens)
        links = extract_alignment(r.decoder_attention, config, ns, nt)
        out.append(flip_links(links) if swap else links)
    return out


def main(argv=None) -> int:
    from crossattn.align import DEFAULT_EXTRACTION, aer, select_extraction
    from crossattn.align.agreement import select_by_agreement
    from crossattn.align.symmetrize import SYMMETRIZATIONS, symmetrize
    from crossattn.models import Translator

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("--model", "--reverse-model", "--test", "--gold", "--dev", "--dev-gold"):
        p.add_argument(name, required=True)
    p.add_argument("--json")
    args = p.parse_args(argv)
    fwd_tr, bwd_tr = Translator.load(args.model), Translator.load(args.reverse_model)
    test, dev = _read(args.test, args.gold), _read(args.dev, args.dev_gold)

    def both(examples):
        src, tgt = [e.source for e in examples], [e.target for e in examples]
        return fwd_tr.align_batch(src, tgt), bwd_tr.align_batch(tgt, src)

    f_test, b_test = both(test)
    f_dev, b_dev = both(dev)
    base = DEFAULT_EXTRACTION
    rows = []

    def add(name, links):
        rows.append((name, aer(test, links)))

    for shift in ("predict", "feed", "average"):
        add(f"forward, shift {shift}", _links(f_test, replace(base, shift=shift)))
    add("reverse, shift predict", _links(b_test, base, swap=True))
    fl, bl = _links(f_test, base), _links(b_test, base, swap=True)
    for method in SYMMETRIZATIONS:
        add(f"both, {method}", [symmetrize(f, b, method) for f, b in zip(fl, bl)])
    agree = select_by_agreement(
        [r.decoder_attention for r in f_dev], [r.decoder_attention for r in b_dev],
        [len(e.source) for e in dev], [len(e.target) for e in dev],
    )  # fmt: skip
    fa, ba = _links(f_test, agree), _links(b_test, agree, swap=True)
    add(f"forward, agreement ({agree.describe()})", fa)
    for method in ("grow-diag-final", "grow-diag-final-and"):
        add(f"both, agreement, {method}", [symmetrize(f, b, method) for f, b in zip(fa, ba)])
    gold = select_extraction([r.decoder_attention for r in f_dev], dev)
    add(f"forward, gold-tuned on dev ({gold.describe()})", _links(f_test, gold))
    print("| extraction | AER % | P % | R % |\n|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {100 * r.aer:.2f} | {100 * r.precision:.2f} | {100 * r.recall:.2f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({name: r.to_dict() for name, r in rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
