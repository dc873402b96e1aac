"""`crossattn export`: a trained model for another runtime (placeholder until the exporters land)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model directory written by `crossattn train`"
    )
    parser.add_argument("--format", required=True, choices=["ctranslate2", "onnx"])
    parser.add_argument("--out", required=True, help="directory to write")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("export is not built yet")
