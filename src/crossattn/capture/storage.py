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
from os import PathLike
from typing import Any

import torch

from .reduce import from_topk_parts, is_topk, nbytes, topk_parts

FORMAT = "crossattn.capture"
VERSION = 1
META_KEY = "crossattn.capture"


def save(rec: Any, path: str | PathLike[str]) -> None:
    from safetensors.torch import save_file

    try:
        json.dumps(rec.metadata)
    except TypeError as err:
        raise TypeError(f"rec.metadata must be JSON-serialisable to be saved: {err}") from err
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
        "metadata": rec.metadata,
        "image": image,
    }
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(header)})


def read_header(path: str | PathLike[str]) -> dict[str, Any]:
    """The JSON header of a saved capture, without reading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if META_KEY not in meta:
        raise ValueError(
            f"{path} is not a crossattn capture: its safetensors metadata has no {META_KEY!r}"
        )
    header = json.loads(meta[META_KEY])
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ValueError(
            f"{path}: unsupported capture format {header.get('format')!r} version "
            f"{header.get('version')!r}; expected {FORMAT!r} version {VERSION}"
        )
    return header


def load(cls: type, path: str | PathLike[str]) -> Any:
    from safetensors.torch import load_file

    header = read_header(path)
    tensors = load_file(str(path))
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
