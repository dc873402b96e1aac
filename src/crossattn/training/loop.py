"""The training loop: AdamW steps on seeded batches, the learning-rate schedule, evaluation and
saving on the way, and Ctrl-C stopping at a step boundary with a consistent checkpoint."""

from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.seq2seq import Seq2SeqTransformer
from .batching import Encoded, batch_norm, collate
from .distributed import Dist
from .losses import LossParts, batch_loss, evaluate_loss
from .options import TrainOptions
from .rundir import save_run


def log(msg: str) -> None:
    """A line for the person running the training, on stderr."""
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Run:
    """What the training loop works on."""

    model: Seq2SeqTransformer
    optimizer: torch.optim.Optimizer
    opts: TrainOptions
    dist: Dist
    out: Path
    train_set: list[Encoded]
    dev_set: list[Encoded]
    batches: list[list[int]]
    with_align: bool
    tokenizers: tuple[Any, Any] | None = None  # (source, target) `Tokenizer`s

    def batch_at(self, step: int) -> list[int]:
        """The example indices of ``step``: every epoch visits the batches in a seeded order."""
        epoch, pos = divmod(step, len(self.batches))
        order = list(range(len(self.batches)))
        random.Random(self.opts.seed * 100_003 + epoch).shuffle(order)
        return self.batches[order[pos]]

    def save(self, step: int, seconds: float, dev: dict[str, float], finish=None) -> None:
        """Save the checkpoint, weights and state of ``step`` (see `save_run`)."""
        save_run(self.out, self.model, self.optimizer, step, seconds, dev, finish=finish)


def make_optimizer(model: Seq2SeqTransformer, opts: TrainOptions) -> torch.optim.AdamW:
    """AdamW, with weight decay on the matrices other than the embeddings; the fused kernel (one
    pass over each parameter instead of a dozen elementwise ops) on CPU and CUDA parameters."""
    decay = [p for n, p in model.named_parameters() if p.dim() > 1 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() > 1 and "embed" not in n)]
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": opts.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=opts.lr, betas=(0.9, 0.98), eps=1e-9, fused=fused or None,
    )  # fmt: skip


def lr_factor(step: int, progress: float, warmup: int, min_ratio: float) -> float:
    """The learning rate of ``step`` over the peak one: linear warm-up over ``warmup`` steps,
    then cosine decay to ``min_ratio`` as ``progress`` (the share of the run done, 0..1) goes to
    1 (``min_ratio=1``: none)."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return warm * (min_ratio + (1.0 - min_ratio) * cos)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) ended `train` at a step boundary, after it saved the checkpoint of that
    step in ``out`` (``resume=True`` continues from it). A `KeyboardInterrupt`."""

    def __init__(self, out: Path, step: int) -> None:
        super().__init__(
            f"interrupted at step {step}: its checkpoint is saved in {str(out)!r} "
            "(resume continues from it)"
        )
        self.out, self.step = out, step


class _Interrupts:
    """While active (main thread, SIGINT at Python's default): the first Ctrl-C only sets
    ``requested``, for the loop to stop at the next step boundary with a consistent checkpoint;
    a second one interrupts at once, as Ctrl-C does."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _Interrupts:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _Progress:
    """The progress bar of the main process (when ``opts.progress``) with the smoothed loss
    and the training tokens per second (time spent evaluating and saving left out)."""

    def __init__(self, run: Run, step: int) -> None:
        self.bar = None
        if run.dist.main and run.opts.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=run.opts.steps, initial=step, file=sys.stderr, unit="step",
                            dynamic_ncols=True, mininterval=1.0)  # fmt: skip
        self.tokens, self.since = 0, time.perf_counter()

    def update(self, step: int, tokens: int, loss: float, lr: float, now: float) -> None:
        self.tokens += tokens
        if self.bar is None:
            return
        self.bar.update(1)
        if now - self.since > 2.0 or step == 1:
            rate = self.tokens / max(now - self.since, 1e-9)
            self.tokens, self.since = 0, now
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.1e}",
                                 refresh=False)  # fmt: skip

    def restart(self) -> None:
        """Count tokens per second from now (after an evaluation or a save)."""
        self.tokens, self.since = 0, time.perf_counter()

    def say(self, msg: str) -> None:
        self.bar.write(msg, file=sys.stderr) if self.bar is not None else log(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _should_stop(opts: TrainOptions, step: int, start_step: int, elapsed: float) -> bool:
    budget = None if opts.minutes is None else opts.minutes * 60.0
    return (
        (opts.steps is not None and step >= opts.steps)
        or (budget is not None and elapsed >= budget)
        or (opts.stop_after is not None and step - start_step >= opts.stop_after)
    )


def _progress(opts: TrainOptions, step: int, elapsed: float) -> float:
    """The share of the run done (0..1), by steps or by minutes, whichever is further."""
    return max(
        0.0 if opts.steps is None else step / opts.steps,
        0.0 if opts.minutes is None else elapsed / (opts.minutes * 60.0),
    )


def train_loop(run: Run, state: dict[str, Any]) -> tuple[int, float | None, dict, float]:
    """The steps from ``state["step"]`` to the end of the run, evaluating and saving on the way.

    Returns (step reached, smoothed training loss or None, dev metrics, seconds in the loop).
    Ctrl-C stops it at the next step boundary: it saves a checkpoint, then raises
    `TrainingInterrupted`.
    """
    opts, dist = run.opts, run.dist
    step = start_step = int(state["step"])
    loop_start = time.perf_counter()
    last_eval = last_save = loop_start
    bar = _Progress(run, step)
    run.model.train()
    ema_loss: float | None = None
    dev_metrics: dict[str, float] = dict(state.get("dev", {}))
    with _Interrupts() as interrupts:
        try:
            while True:
                elapsed = time.perf_counter() - loop_start
                stop = _should_stop(opts, step, start_step, elapsed)
                if dist.any(stop or interrupts.requested):
                    break
                loss_now, tokens = optimisation_step(run, step, _progress(opts, step, elapsed))
                step += 1
                ema_loss = loss_now if ema_loss is None else 0.95 * ema_loss + 0.05 * loss_now
                now = time.perf_counter()
                bar.update(step, tokens, ema_loss, run.optimizer.param_groups[0]["lr"], now)
                if dist.main and run.dev_set and now - last_eval >= opts.eval_seconds:
                    dev_metrics = evaluate_loss(
                        run.model, run.dev_set, opts.batch_tokens, dist.device
                    )
                    last_eval = time.perf_counter()
                    bar.restart()  # tokens/s counts training only
                    bar.say(f"step {step}: dev loss {dev_metrics['loss']:.3f} "
                            f"accuracy {dev_metrics['accuracy']:.3f}")  # fmt: skip
                if dist.main and now - last_save >= opts.save_seconds:
                    seconds = float(state.get("seconds", 0.0)) + time.perf_counter() - loop_start
                    run.save(step, seconds, dev_metrics)
                    last_save = time.perf_counter()
                    bar.restart()
        finally:
            bar.close()
    loop_seconds = time.perf_counter() - loop_start
    if dist.any(interrupts.requested):
        if dist.main:
            run.save(step, float(state.get("seconds", 0.0)) + loop_seconds, dev_metrics)
        dist.barrier()
        dist.close()
        raise TrainingInterrupted(run.out, step)
    return step, ema_loss, dev_metrics, loop_seconds


def optimisation_step(run: Run, step: int, progress: float) -> tuple[float, int]:
    """One AdamW step on the batch of ``step`` (this process's rows of it): (the training
    loss per token of those rows, source + target tokens of the whole batch)."""
    opts, dist, model, optimizer = run.opts, run.dist, run.model, run.optimizer
    for group in optimizer.param_groups:
        group["lr"] = opts.lr * lr_factor(step, progress, opts.warmup, opts.min_lr_ratio)
    full = collate([run.train_set[i] for i in run.batch_at(step)], run.with_align)
    norm = batch_norm(full)
    part = full.rows(slice(dist.rank, None, dist.world)).to(dist.device)
    torch.manual_seed(opts.seed * 1_000_003 + step * 1009 + dist.rank)  # dropout
    optimizer.zero_grad(set_to_none=True)
    if part.source.shape[0] > 0:
        parts = batch_loss(model, part, opts, norm)
        parts.total.backward()
    else:
        parts = LossParts(torch.zeros(()), 0.0, 0, 0)
    params = list(model.parameters())
    for p in params:  # every process takes part in the all-reduce
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    dist.sum_grads(params)
    torch.nn.utils.clip_grad_norm_(params, opts.clip)
    optimizer.step()
    return parts.nll_sum / max(parts.tokens, 1), int(norm["tokens"] + norm["source_tokens"])
