"""`crossattn export`: a trained model directory for CTranslate2 or onnxruntime.

``--format ctranslate2`` writes a CTranslate2 model directory (``model.bin``, ``config.json``,
both vocabularies); ``--format onnx`` writes the encoder and one decoder step as ONNX graphs
with a config and both vocabularies (run them with
`crossattn.models.export_onnx_runner.OnnxTranslator`). See docs/export.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..cli import CommandError
from ._common import brief

FORMATS = {
    # format -> the packages it needs
    "ctranslate2": ("ctranslate2",),
    "onnx": ("onnx", "onnxruntime"),  # and onnxscript with --dynamo
}
QUANTIZATIONS = (
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)  # fmt: skip  (ctranslate2's weight types)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model directory written by `crossattn train` (required)"
    )
    parser.add_argument(
        "--format", required=True, choices=sorted(FORMATS),
        help="ctranslate2: a CTranslate2 model directory; onnx: encoder and decoder-step "
        "graphs for onnxruntime (required)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="directory to write (required)")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace --out if it exists (default: refuse an existing --out)",
    )  # fmt: skip
    parser.add_argument(
        "--quantization", choices=QUANTIZATIONS, default=None,
        help="ctranslate2 only: weight type of the exported model (default: float32 weights)",
    )  # fmt: skip
    parser.add_argument(
        "--dynamo", action="store_true",
        help="onnx only: capture the graphs with torch.export (torch.onnx.export(dynamo=True)) "
        "instead of the TorchScript-based tracer (default: the tracer)",
    )  # fmt: skip


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _check_packages(fmt: str, extra: tuple[str, ...] = ()) -> None:
    missing = [name for name in FORMATS[fmt] + extra if not _installed(name)]
    if missing:
        raise CommandError(
            f"argument --format: {fmt} needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install "
            "'crossattn[export]'"
        )


def _check_model_dir(path: str) -> None:
    from ..models.checkpoint import CONFIG_FILE, SOURCE_VOCAB_FILE, TARGET_VOCAB_FILE, WEIGHTS_FILE

    expected = "expected a model directory written by crossattn train (or crossattn demo)"
    if not os.path.exists(path):
        raise CommandError(f"argument --model: no such directory: {path!r}; {expected}")
    if not os.path.isdir(path):
        raise CommandError(f"argument --model: {path!r} is a file; {expected}")
    for name in (CONFIG_FILE, WEIGHTS_FILE, SOURCE_VOCAB_FILE, TARGET_VOCAB_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            raise CommandError(
                f"argument --model: {path!r} is missing {name}; {expected} (it holds "
                f"{CONFIG_FILE}, {WEIGHTS_FILE}, {SOURCE_VOCAB_FILE} and {TARGET_VOCAB_FILE})"
            )


def run(args: argparse.Namespace) -> int:
    if args.quantization is not None and args.format != "ctranslate2":
        raise CommandError(
            f"argument --quantization: only with --format ctranslate2 (got --format {args.format})"
        )
    if args.dynamo and args.format != "onnx":
        raise CommandError(
            f"argument --dynamo: only with --format onnx (got --format {args.format})"
        )
    _check_packages(args.format, ("onnxscript",) if args.dynamo else ())
    _check_model_dir(args.model)
    from safetensors import SafetensorError

    from ..models.checkpoint import load_model
    from ..models.export_common import check_out_dir

    try:  # before the model is read: a refused --out costs nothing
        check_out_dir(args.out, args.overwrite, protect=args.model)
    except (FileExistsError, ValueError) as err:
        raise CommandError(f"argument --out: {err}") from err

    try:
        model, source_vocab, target_vocab = load_model(args.model)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        raise CommandError(
            f"argument --model: cannot load the model in {args.model!r} ({brief(err)}); "
            "expected an intact model directory written by crossattn train"
        ) from err
    kw = dict(overwrite=args.overwrite, model_dir=args.model)
    try:
        if args.format == "ctranslate2":
            from ..models.export_ctranslate2 import export_ctranslate2

            out = export_ctranslate2(
                model, source_vocab, target_vocab, args.out, quantization=args.quantization, **kw
            )
        else:
            from ..models.export_onnx import export_onnx

            out = export_onnx(model, source_vocab, target_vocab, args.out, dynamo=args.dynamo, **kw)
    except FileExistsError as err:  # --out appeared since the check
        raise CommandError(f"argument --out: {err}") from err
    except OSError as err:
        raise CommandError(f"argument --out: cannot write {args.out!r} ({brief(err)})") from err
    files = ", ".join(sorted(os.listdir(out)))
    print(f"wrote {args.format} model to {out} ({files})", file=sys.stderr)
    return 0
