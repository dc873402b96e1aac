"""Training of `Seq2SeqTransformer` translators (`train`), and of the VQA model (`.vqa`).

`train(TrainOptions(...))` is what `crossattn train` runs; it writes a model directory
(`crossattn.models.checkpoint` for the model's files, `.rundir` for the run's checkpoint and
state). Every file is written atomically: to a temporary name, flushed, then renamed over the
old one.

Modules, one concern each:

    options      TrainOptions: every option, its type and range, checked in one place
    rules        the rules between options, the model directory and the data (shared with the CLI)
    batching     pairs as ids, the dev split, length-grouped batches, padded tensors
    losses       the training loss (cross-entropy, attention losses) and dev metrics
    loop         the optimisation steps, schedule, evaluation, saving, Ctrl-C
    distributed  the process group under torchrun
    checkpoint   the one-file training checkpoint that resume reads
    rundir       the run's files in the model directory, and saving them
    extraction   the alignment extraction config chosen at the end of a run
    trainer      `train` itself
    vqa          training of the VQA model (`crossattn vqa`)

Distributed data parallel: under ``torchrun --nproc-per-node N``, each step's batch is split by
rows over the N processes, so the update equals the single-process one up to floating-point
summation order (see `.distributed`).
"""

from ..models.checkpoint import (
    CONFIG_FILE,
    EXTRACTION_FILE,
    SOURCE_VOCAB_FILE,
    TARGET_VOCAB_FILE,
    WEIGHTS_FILE,
    load_model,
    save_model,
    write_json,
)
from .batching import (
    Batch,
    Encoded,
    batch_norm,
    collate,
    encode_examples,
    make_batches,
    split_dev,
)
from .checkpoint import CheckpointError
from .extraction import attention_for_pairs, choose_extraction
from .loop import TrainingInterrupted
from .losses import LossParts, batch_loss, evaluate_loss
from .options import MODEL_DEFAULTS, TrainOptions
from .rules import check_out_dir
from .rundir import CHECKPOINT_FILE, MODEL_DIR_FILES, STATE_FILE, model_files
from .trainer import TrainResult, choose_threads, read_examples, train

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "EXTRACTION_FILE",
    "MODEL_DEFAULTS",
    "MODEL_DIR_FILES",
    "SOURCE_VOCAB_FILE",
    "STATE_FILE",
    "TARGET_VOCAB_FILE",
    "WEIGHTS_FILE",
    "Batch",
    "CheckpointError",
    "Encoded",
    "LossParts",
    "TrainOptions",
    "TrainResult",
    "TrainingInterrupted",
    "attention_for_pairs",
    "batch_loss",
    "batch_norm",
    "check_out_dir",
    "choose_extraction",
    "choose_threads",
    "collate",
    "encode_examples",
    "evaluate_loss",
    "load_model",
    "make_batches",
    "model_files",
    "read_examples",
    "save_model",
    "split_dev",
    "train",
    "write_json",
]
