"""`crossattn train`: train an encoder-decoder translator on parallel text."""

from __future__ import annotations

import argparse
import dataclasses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train import TrainOptions  # torch-free: TrainOptions only names defaults

    d = TrainOptions(data="", out="")
    p = parser
    p.add_argument("--data", required=True, help="parallel text: 'source ||| target' or TSV lines")
    p.add_argument(
        "--alignments", help="Pharaoh gold alignments of --data (i-j sure, ipj possible)"
    )
    p.add_argument("--one-indexed", action="store_true", help="the alignments count from 1")
    p.add_argument(
        "--skip-bad-lines", action="store_true", help="skip malformed lines, say how many"
    )
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--steps", type=int, help="total optimisation steps")
    p.add_argument(
        "--minutes", type=float, help="wall-clock bound of the training loop (default 4)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--stop-after", type=int, help="end this run after N steps (schedule kept)")
    p.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("model")
    g.add_argument("--d-model", type=int, default=d.d_model)
    g.add_argument("--heads", type=int, default=d.heads)
    g.add_argument("--encoder-layers", type=int, default=d.encoder_layers)
    g.add_argument("--decoder-layers", type=int, default=d.decoder_layers)
    g.add_argument("--dim-ff", type=int, default=d.dim_ff)
    g.add_argument("--dropout", type=float, default=d.dropout)
    g.add_argument("--post-norm", action="store_true", help="post-norm layers (default pre-norm)")
    g.add_argument("--max-len", type=int, default=d.max_len, help="longest sentence, in tokens")
    g.add_argument("--untied", action="store_true", help="do not tie target embedding and output")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-tokens", type=int, default=d.batch_tokens)
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of AdamW")
    g.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--clip", type=float, default=d.clip, help="gradient-norm clipping")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g = p.add_argument_group("attention losses")
    g.add_argument("--guided-alignment", action="store_true",
                   help="supervise one cross-attention head with --alignments (Garg et al. 2019)")  # fmt: skip
    g.add_argument("--guided-weight", type=float, default=d.guided_weight)
    g.add_argument("--attention-layer", type=int, default=d.attention_layer,
                   help="decoder layer of the attention losses (negative: from the top)")  # fmt: skip
    g.add_argument("--attention-head", type=int, default=d.attention_head,
                   help="head supervised by the guided-alignment loss")  # fmt: skip
    g.add_argument("--entropy-weight", type=float, default=d.entropy_weight,
                   help="weight of the attention-entropy regulariser (sharper maps)")  # fmt: skip
    g.add_argument("--coverage-weight", type=float, default=d.coverage_weight,
                   help="weight of the coverage regulariser (every source word attended once)")  # fmt: skip
    g = p.add_argument_group("evaluation")
    g.add_argument("--dev-size", type=int, default=d.dev_size, help="pairs held out for dev")
    g.add_argument("--eval-seconds", type=float, default=d.eval_seconds)
    g.add_argument("--save-seconds", type=float, default=d.save_seconds)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: 1 when the cores are already busy, else all)",
    )


def options_from_args(args: argparse.Namespace):
    from ..train import TrainOptions

    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)
          if hasattr(args, f.name)}  # fmt: skip
    kw["norm_first"] = not args.post_norm
    kw["tie_embeddings"] = not args.untied
    kw["progress"] = not args.no_progress
    if args.steps is None and args.minutes is None:
        kw["minutes"] = 4.0
    return TrainOptions(**kw)


def run(args: argparse.Namespace) -> int:
    import json

    from ..train import choose_threads, train

    choose_threads(args.threads)

    if args.guided_alignment and not args.alignments:
        raise SystemExit("crossattn train: --guided-alignment needs --alignments FILE")
    result = train(options_from_args(args))
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"out": str(result.out), "steps": result.steps,
                          "seconds": round(result.seconds, 1), "dev": result.dev}))  # fmt: skip
    return 0
