"""`crossattn view FILE`: write the interactive HTML viewer of recorded maps next to FILE.

FILE is one of:

* a capture saved by ``AttentionRecorder.save`` (a ``.safetensors`` file whose metadata holds
  the maps' layer names and tokens);
* a ``.safetensors`` file with a tensor ``weights`` of shape (L, S), (H, L, S) or
  (layers, H, L, S), and optional metadata entries ``source_tokens`` and ``target_tokens``
  (JSON lists of strings) and ``links`` (a Pharaoh line, source index first);
* a ``.pt`` / ``.pth`` file written by ``torch.save`` holding either that tensor or a dict
  ``{"weights": tensor, "source_tokens": [...], "target_tokens": [...], "links": "0-0 1-2"}``.

``--source`` and ``--target`` give (or replace) the tokens as space-separated text. ``--layers``,
``--batch`` and ``--step`` select within a capture; on any other file they are an error.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..cli import CommandError, float_range

STEP_WORDS = ("auto", "concat", "mean", "last")


def step_argument(text: str) -> int | str | None:
    """--step: an int, or one of STEP_WORDS ('auto' is None: decide from the shapes)."""
    word = text.strip().lower()
    if word in STEP_WORDS:
        return None if word == "auto" else word
    try:
        return int(word)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer (a call index) or one of {', '.join(STEP_WORDS)}, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a saved capture, or a .safetensors/.pt file")
    parser.add_argument("-o", "--out", help="where to write the page (default: FILE with .html)")
    parser.add_argument("--open", action="store_true", help="also open it in the web browser")
    parser.add_argument("--source", help="source tokens, separated by spaces (default: those "
                        "saved in FILE, else none)")  # fmt: skip
    parser.add_argument("--target", help="target tokens, separated by spaces (default: those "
                        "saved in FILE, else none)")  # fmt: skip
    parser.add_argument("--links", help="gold alignment as a Pharaoh line ('0-0 1-2 3p4') "
                        "(default: the links saved in FILE, else none)")  # fmt: skip
    parser.add_argument("--title", help="page title (default: the file name)")
    parser.add_argument("--layers", nargs="+", metavar="NAME",
                        help="layers of a capture to keep (default: all)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=None,
                        help="batch item of a capture (default: 0)")  # fmt: skip
    parser.add_argument(
        "--step",
        type=step_argument,
        default=None,
        help="a capture's calls per layer: an index, 'concat', 'mean', 'last' or 'auto' "
        "(default: auto)",
    )
    parser.add_argument(
        "--threshold",
        type=float_range(0.0, 1.0),
        default=0.1,
        help="initial highlight threshold in [0, 1] (default 0.1)",
    )


def _safetensors(path: str):
    """`safe_open(path)`; a file that is no safetensors file is a clean error."""
    from safetensors import SafetensorError, safe_open

    from ._common import brief

    try:
        return safe_open(path, framework="pt")
    except (SafetensorError, OSError, ValueError) as err:
        raise CommandError(
            f"argument FILE: cannot read {path!r} as a .safetensors file ({brief(err)}); "
            "expected a capture saved by AttentionRecorder.save or a file written by safetensors"
        ) from err


def _torch_load(path: str) -> Any:
    """`torch.load(path)` of tensors only; a corrupt or foreign file is a clean error."""
    import pickle

    import torch

    from ._common import brief

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, EOFError, OSError,
            IndexError) as err:  # fmt: skip
        raise CommandError(
            f"argument FILE: cannot read {path!r} as a torch.save file ({brief(err)}); expected "
            "a tensor, or a dict of a tensor and token lists, written by torch.save"
        ) from err


def _is_capture(path: str) -> bool:
    from ..capture.storage import META_KEY

    with _safetensors(path) as f:
        return META_KEY in (f.metadata() or {})


def _load_plain(path: str) -> dict[str, Any]:
    """A .safetensors or .pt weights file as {"weights": ..., "source_tokens": ..., ...}."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        with _safetensors(path) as f:
            if "weights" not in f.keys():
                raise ValueError(
                    f"{path} has no tensor named 'weights' (it has {list(f.keys())}) and is not a "
                    "saved capture"
                )
            meta = f.metadata() or {}
            out: dict[str, Any] = {"weights": f.get_tensor("weights")}
        for key in ("source_tokens", "target_tokens"):
            if key in meta:
                try:
                    out[key] = json.loads(meta[key])
                except ValueError as err:
                    raise ValueError(
                        f"{path}: metadata {key!r} must be a JSON list of strings ({err})"
                    ) from None
        if "links" in meta:
            out["links"] = meta["links"]
        return out
    if ext in (".pt", ".pth"):
        import torch

        obj = _torch_load(path)
        if isinstance(obj, torch.Tensor):
            return {"weights": obj}
        if isinstance(obj, dict) and "weights" in obj:
            unknown = set(obj) - {"weights", "source_tokens", "target_tokens", "links"}
            if unknown:
                raise ValueError(f"{path}: unknown keys {sorted(unknown)} in the saved dict")
            return dict(obj)
        raise ValueError(
            f"{path} must hold a weights tensor or a dict with a 'weights' tensor, got "
            f"{type(obj).__name__}"
        )
    raise ValueError(f"FILE must be a .safetensors, .pt or .pth file, got {path!r}")


def _refuse_capture_options(args: argparse.Namespace, path: str) -> None:
    """--layers, --batch and --step select within a capture: on a plain file, an error."""
    given = [(option, value) for option, value in
             (("--layers", args.layers), ("--batch", args.batch), ("--step", args.step))
             if value is not None]  # fmt: skip
    if given:
        option, value = given[0]
        raise CommandError(
            f"argument {option}: applies only to a capture saved by AttentionRecorder.save, but "
            f"{path!r} holds a plain weights tensor; leave {option} out (slice the tensor "
            "before saving it to show a part of it)"
        )


def run(args: argparse.Namespace) -> int:
    from ..viz import to_html
    from ._common import check_output_file

    path = args.file
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "no such file"
        raise CommandError(
            f"argument FILE: {what}: {path!r}; expected a saved capture, or a .safetensors, .pt "
            "or .pth file of attention weights"
        )
    out = args.out or os.path.splitext(path)[0] + ".html"
    check_output_file(
        out, "-o/--out" if args.out else "FILE (its page goes next to it; choose with -o)"
    )
    source = args.source.split() if args.source else None
    target = args.target.split() if args.target else None
    title = args.title or os.path.basename(path)
    try:
        if path.lower().endswith(".safetensors") and _is_capture(path):
            kwargs: dict[str, Any] = {"weights": path, "layers": args.layers, "step": args.step}
            kwargs.update(batch=0 if args.batch is None else args.batch, links=args.links)
        else:
            _refuse_capture_options(args, path)
            loaded = _load_plain(path)
            kwargs = {
                "weights": loaded["weights"],
                "links": args.links if args.links else loaded.get("links"),
            }
            source = source or loaded.get("source_tokens")
            target = target or loaded.get("target_tokens")
        html = to_html(
            source_tokens=source,
            target_tokens=target,
            title=title,
            threshold=args.threshold,
            **kwargs,
        )
    except (ValueError, TypeError) as err:  # the library checking FILE and the options
        raise CommandError(str(err)) from err
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(html)
    except OSError as err:
        raise CommandError(f"argument -o/--out: cannot write {out!r}: {err}") from err
    print(os.path.abspath(out))
    if args.open:
        import pathlib
        import webbrowser

        webbrowser.open(pathlib.Path(out).resolve().as_uri())
    return 0
