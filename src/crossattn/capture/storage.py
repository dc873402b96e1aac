"""Save recorded maps to one safetensors file and load them back.

File layout: a safetensors file whose tensors are

- ``maps/<layer>/<i>``: the i-th recorded map of a layer, dense (B, L, S) or (B, heads, L, S);
- ``maps/<layer>/<i>/values`` and ``maps/<layer>/<i>/indices`` for a top-k map: the k kept
  weights of each query row (..., L, k) and their source positions (int32, ascending);
- ``image``: the attached image, if any;

and whose ``__metadata__["crossattn.capture"]`` is a JSON object::

    {"format": "crossattn.capture", "version": 1,
     "heads": "mean" | "all" | [ints], "top_k": k | null, "grid": [gh, gw] | null,
     "layers": [names, in recording order],
     "sources": {name: module kind},
     "query_grid": {name: [h, w]} for layers whose queries are image positions,
     "maps": {name: [{"key": tensor name, "step": i, "timestep": t | null,
                      "shape": [...], "dtype": "float32", "layout": "dense" | "topk"}]},
     "metadata": {"source_tokens": [...], "target_tokens": [...], ...},
     "image": {"key": "image", "shape": [...]} | null}
"""

from __future__ import annotations

import json
import os
import uuid
from os import PathLike
from typing import Any

import torch

from .reduce import from_topk_parts, is_topk, nbytes, topk_parts

FORMAT = "crossattn.capture"
VERSION = 1
META_KEY = "crossattn.capture"


def check_metadata(metadata: dict[str, Any], added: dict[str, Any]) -> None:
    """TypeError naming the first entry of `metadata` that JSON cannot hold.

    `added` holds the entries passed to ``save(path, **metadata)`` (named as such).
    """
    for key, value in metadata.items():
        try:
            json.dumps({key: value})
        except (TypeError, ValueError) as err:
            where = f"save(..., {key}=...)" if key in added else f"rec.metadata[{key!r}]"
            raise TypeError(
                f"rec.metadata must be JSON-serialisable to be saved, but {where} is not: "
                f"{err}. Nothing was written, and rec.metadata is unchanged"
            ) from err


def save(rec: Any, path: str | PathLike[str], metadata: dict[str, Any] | None = None) -> None:
    """Write `rec`'s maps with `metadata` (default: ``rec.metadata``), already validated.

    The file is written next to `path` under a temporary name and moved into place, so a
    failed save leaves no partial file (and an existing file at `path` as it was).
    """
    from safetensors.torch import save_file

    metadata = rec.metadata if metadata is None else metadata
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, list[dict[str, Any]]] = {}
    for name, maps in rec.maps.items():
        entries = []
        for i, m in enumerate(maps):
            key = f"maps/{name}/{i}"
            entry: dict[str, Any] = {
                "key": key,
                "step": rec.steps[name][i],
                "timestep": rec.timesteps[name][i],
                "shape": list(m.shape),
                "dtype": str(m.dtype).removeprefix("torch."),
            }
            if is_topk(m):
                values, cols = topk_parts(m.cpu())
                tensors[key + "/values"] = values.contiguous()
                tensors[key + "/indices"] = cols.to(torch.int32).contiguous()
                entry["layout"] = "topk"
            else:
                tensors[key] = m.detach().cpu().contiguous()
                entry["layout"] = "dense"
            entries.append(entry)
        index[name] = entries
    image = None
    if rec.image is not None:
        img = torch.as_tensor(rec.image).detach().cpu().contiguous()
        tensors["image"] = img
        image = {"key": "image", "shape": list(img.shape)}
    header = {
        "format": FORMAT,
        "version": VERSION,
        "heads": rec.heads if isinstance(rec.heads, str) else list(rec.heads),
        "top_k": rec.top_k,
        "grid": None if rec.grid is None else list(rec.grid),
        "layers": list(rec.maps),
        "sources": dict(rec.sources),
        "query_grid": {name: list(hw) for name, hw in rec.query_grid.items()},
        "maps": index,
        "metadata": metadata,
        "image": image,
    }
    text = json.dumps(header)
    target = os.fspath(path)
    folder, base = os.path.split(target)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, tmp, metadata={META_KEY: text})
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


EXPECTED = "a crossattn capture written by AttentionRecorder.save (a safetensors file)"


def read_header(path: str | PathLike[str]) -> dict[str, Any]:
    """The JSON header of a saved capture, without reading its tensors.

    ValueError naming `path` when it is not a readable capture (FileNotFoundError when there
    is no such file).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except SafetensorError as err:
        raise ValueError(f"{path} cannot be read: expected {EXPECTED}; safetensors: {err}") from err
    if META_KEY not in meta:
        raise ValueError(
            f"{path} is not a crossattn capture: its safetensors metadata has no {META_KEY!r}"
        )
    try:
        header = json.loads(meta[META_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: its {META_KEY!r} header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"{path}: its {META_KEY!r} header is not a JSON object")
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ValueError(
            f"{path}: unsupported capture format {header.get('format')!r} version "
            f"{header.get('version')!r}; expected {FORMAT!r} version {VERSION}"
        )
    return header


def load(cls: type, path: str | PathLike[str]) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = read_header(path)
    try:
        tensors = load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"{path} cannot be read: expected {EXPECTED}; safetensors: {err}") from err
    heads = header["heads"] if isinstance(header["heads"], str) else list(header["heads"])
    grid = None if header["grid"] is None else tuple(header["grid"])
    rec = cls(heads=heads, top_k=header["top_k"], grid=grid, metadata=header["metadata"])
    rec.sources.update(header["sources"])
    rec.query_grid.update({n: tuple(hw) for n, hw in header.get("query_grid", {}).items()})
    for name in header["layers"]:
        for entry in header["maps"][name]:
            key = entry["key"]
            if entry["layout"] == "topk":
                m = from_topk_parts(
                    tensors[key + "/values"], tensors[key + "/indices"], entry["shape"]
                )
            else:
                m = tensors[key]
            rec.maps.setdefault(name, []).append(m)
            rec.steps.setdefault(name, []).append(entry["step"])
            rec.timesteps.setdefault(name, []).append(entry["timestep"])
            rec.nbytes += nbytes(m)
    if header.get("image") is not None:
        rec.image = tensors[header["image"]["key"]]
    return rec
