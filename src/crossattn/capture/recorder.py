"""`AttentionRecorder`: record cross-attention maps, by layer name, at bounded memory."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from typing import Any

import torch
from torch import Tensor, nn

from .. import _checks
from ..layers import hooks
from . import diffusers as diffusers_source
from . import mha as mha_source
from . import transformers as transformers_source
from .recompute import recompute_weights
from .reduce import HeadsArg, check_grid, check_heads, infer_hw, nbytes, select_heads, to_grid
from .reduce import to_dense as _to_dense
from .reduce import top_k as _top_k
from .selection import (
    LayersArg,
    StepsArg,
    TimestepsArg,
    layer_selector,
    step_selector,
    timestep_selector,
)

CROSSATTN = "crossattn.CrossAttention"
_HOOKED_SOURCES = (mha_source, transformers_source, diffusers_source)


class CaptureBudgetError(RuntimeError):
    """Recording the next map would exceed the recorder's `max_bytes` budget."""


@dataclass
class _Claim:
    """One call of one layer that the recorder keeps."""

    name: str
    step: int
    timestep: float | None
    weights: Any  # what the op must return: "mean" or True


class AttentionRecorder:
    """Record cross-attention maps, with the name of the layer each came from.

    Used as a context manager around the model calls::

        with AttentionRecorder(model) as rec:
            model(...)
        rec.maps["decoder.layers.0.cross_attn"][0]  # (B, L, S) head mean of the first call

    Sources: every `crossattn.CrossAttention` called inside the block (of `model` when given,
    of any model when `model` is None; layers whose ``role`` is "self", the self-attention of
    crossattn's transformer layers, only when ``layers=`` selects them), the crossattn layers
    that attend without calling one (`HierarchicalCrossAttention`, under its ``attn``;
    ``BidirectionalCrossAttention(mode="shared")``, as ``attn_a_to_b`` and ``attn_b_to_a``),
    all through the hook protocol of `crossattn.layers.hooks` (docs/capture.md), and, inside
    `model`, `torch.nn.MultiheadAttention`
    (cross-attention calls: query is not key), transformers encoder-decoder cross-attention
    (BART-like and T5-like modules, `generate()` included) and diffusers ``Attention`` modules
    called with ``encoder_hidden_states``. The model's outputs are not changed: crossattn
    layers ask the op for weights on the call they make anyway (a layer on a pinned backend
    whose caller asks for no weights keeps its call, and its maps are recomputed from its
    queries and keys), other modules keep their own attention path and their maps are
    recomputed through the op, block by block.

    Args:
        model: the module whose layers are recorded (names from ``model.named_modules()``;
            the model itself, when it is one attention layer, by its class name).
            None records every `CrossAttention` called in this context, named
            ``"CrossAttention_0"``, ``"CrossAttention_1"``... in order of first call.
        heads: "mean" (default) keeps the head mean, maps (B, L, S); "all" keeps every head,
            (B, heads, L, S); a list of head indices keeps those, (B, len(heads), L, S).
        layers: None (all); a regular expression (`re.search` on the name); a list of exact
            names (checked against the model's layers on entry); or a callable name -> bool.
        steps: which calls of each layer to keep (0-based per layer: the decode step, or the
            denoising step): None (all), an int, a range, a slice, ints, or a callable.
            Negative indices are refused (ValueError): the number of calls is not known ahead.
        timesteps: for diffusion models, which timestep values to keep (a collection of
            numbers or a callable); the value is read from the model's ``timestep`` argument.
        top_k: keep only the k largest weights of each query row; maps become sparse
            tensors (CSR, int32 indices) of the same shape; `to_dense` gives them dense.
        grid: (gh, gw) or an int: resample the query positions, an image of h*w positions, to
            a gh x gw grid; maps become (B, gh*gw, S). (h, w) comes from a 4-D hidden state,
            else from the aspect ratio of `image_size` or of the model's 4-D ``sample`` input,
            else L must be a square.
        image_size: (H, W) of the image whose positions are the queries (for `grid`).
        max_bytes: budget for all recorded maps; `CaptureBudgetError` is raised before a map
            that would exceed it is stored.
        device: where recorded maps are kept ("cpu" by default; None keeps the model's).
        dtype: storage dtype of the maps (None keeps the model's dtype).
        backend: the op's backend for recomputed maps ("chunked": memory bounded anywhere).
        source_tokens, target_tokens: token strings, stored in `metadata` and saved.
        image: an image tensor (H, W, C) or (C, H, W) saved with the maps.
        metadata: more JSON-serialisable information, saved with the maps.

    Attributes:
        maps: layer name -> list of maps, one per recorded call.
        steps: layer name -> the call index of each recorded map.
        timesteps: layer name -> the diffusion timestep of each recorded map (None if unknown).
        sources: layer name -> the kind of module it is.
        query_grid: layer name -> (h, w) of its query positions when they form an image (the
            `grid`, or the size found from the hidden states, `image_size` or the model's
            ``sample``); row-major, h * w == L.
        metadata: dict saved with the maps (tokens, image size, anything JSON-serialisable).
        nbytes: bytes held by the recorded maps.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        heads: HeadsArg = "mean",
        layers: LayersArg = None,
        steps: StepsArg = None,
        timesteps: TimestepsArg = None,
        top_k: int | None = None,
        grid: int | tuple[int, int] | None = None,
        image_size: tuple[int, int] | None = None,
        max_bytes: int | None = None,
        device: torch.device | str | None = "cpu",
        dtype: torch.dtype | None = None,
        backend: str | None = "chunked",
        source_tokens: list[str] | None = None,
        target_tokens: list[str] | None = None,
        image: Tensor | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        self.model = model
        self.heads = check_heads(heads)
        self.layers = layers
        self._layer_ok, self._layer_names = layer_selector(layers)
        # Layers that serve as self-attention (role "self") are recorded only when selected.
        self._explicit_layers = layers is not None
        self._step_ok = step_selector(steps)
        self._timestep_ok = timestep_selector(timesteps)
        self.top_k = None if top_k is None else _checks.positive_int(top_k, "top_k")
        self.grid = check_grid(grid)
        if image_size is not None:
            image_size = _checks.positive_int_pair(image_size, "image_size", "(H, W)")
        self.image_size = image_size
        if max_bytes is not None:
            max_bytes = _checks.nonnegative_int(max_bytes, "max_bytes")
        self.max_bytes = max_bytes
        self.device = None if device is None else torch.device(device)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be None or a floating torch.dtype, got {dtype!r}")
        self.dtype = dtype
        self.backend = backend
        self.metadata: dict[str, Any] = dict(metadata or {})
        if source_tokens is not None:
            self.metadata["source_tokens"] = list(source_tokens)
        if target_tokens is not None:
            self.metadata["target_tokens"] = list(target_tokens)
        self.image = image
        self.maps: dict[str, list[Tensor]] = {}
        self.steps: dict[str, list[int]] = {}
        self.timesteps: dict[str, list[float | None]] = {}
        self.sources: dict[str, str] = {}
        self.query_grid: dict[str, tuple[int, int]] = {}
        self.nbytes = 0
        self._calls: dict[str, int] = {}
        self._names: dict[tuple[int, str | None], str] = {}
        self._anonymous: list[nn.Module] = []
        self._handles: list[Any] = []
        self._token = None
        self._timestep: float | None = None
        self._sample_hw: tuple[int, int] | None = None
        self._kv_memo: dict[int, tuple[Any, int, tuple, Tensor]] = {}

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> AttentionRecorder:
        if self._token is not None:
            raise RuntimeError("this AttentionRecorder is already recording; use a new one")
        from ..layers.attention import CrossAttention

        hooked = []
        if self.model is not None:
            found: dict[str, str] = {}
            for name, module in self.model.named_modules():
                name = name or type(module).__name__  # the model itself
                if isinstance(module, CrossAttention):
                    found[name] = CROSSATTN
                    wanted = module.role != "self" or self._explicit_layers
                    if self._layer_ok(name) and wanted:
                        self._names[(id(module), None)] = name
                    continue
                parts = getattr(module, "attention_parts", ())
                for part in parts:  # maps of a layer without CrossAttention modules
                    found[f"{name}.{part}"] = CROSSATTN
                    if self._layer_ok(f"{name}.{part}"):
                        self._names[(id(module), part)] = f"{name}.{part}"
                if parts:
                    continue
                for source in _HOOKED_SOURCES:
                    if source.matches(module):
                        found[name] = source.__name__
                        if self._layer_ok(name):
                            hooked.append((module, source, name))
                        break
            missing = sorted(self._layer_names - found.keys()) if self._layer_names else []
            if missing:
                listing = ", ".join(repr(n) for n in found) or "none"
                raise ValueError(
                    f"layers={sorted(self._layer_names)}: no attention layer named {missing} in "
                    f"the model; its attention layers are: {listing}"
                )
            for module, source, name in hooked:
                self._handles.append(
                    module.register_forward_hook(source.make_hook(self, name), with_kwargs=True)
                )
            self._handles.append(
                self.model.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True)
            )
        self._token = hooks.activate(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop recording (what `with` does on exit); the recorded maps stay."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._token is not None:
            hooks.deactivate(self._token)
            self._token = None
        self._kv_memo.clear()
        self._anonymous.clear()

    # ------------------------------------------------------------------ recording

    def _model_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Read the image size and the diffusion timestep from the model's arguments."""
        from ._signature import call_arguments

        try:
            call = call_arguments(module, args, kwargs)
        except TypeError:
            return
        sample = call.get("sample")
        if isinstance(sample, Tensor) and sample.dim() == 4:
            self._sample_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        timestep = call.get("timestep")
        if isinstance(timestep, Tensor) and timestep.numel() > 0:
            self._timestep = float(timestep.reshape(-1)[0])
        elif isinstance(timestep, (int, float)):
            self._timestep = float(timestep)

    def _claim(self, name: str, kind: str) -> _Claim | None:
        """Count one call of layer `name`; a claim when that call is to be recorded."""
        self.sources.setdefault(name, kind)
        step = self._calls.get(name, 0)
        self._calls[name] = step + 1
        if self._step_ok is not None and not self._step_ok(step):
            return None
        timestep = self._timestep
        if self._timestep_ok is not None:
            if timestep is None:
                raise ValueError(
                    "timesteps= was given, but the model call had no `timestep` argument "
                    "(record a diffusion model passed as model=); select calls with steps= instead"
                )
            if not self._timestep_ok(timestep):
                return None
        return _Claim(name, step, timestep, "mean" if self.heads == "mean" else True)

    def claim_call(self, layer: nn.Module, part: str | None = None) -> _Claim | None:
        """A claim when this call of a crossattn `layer` (its map `part`) is to be recorded
        (the hook protocol of `crossattn.layers.hooks`)."""
        name = self._names.get((id(layer), part))
        if name is None:
            role = getattr(layer, "role", "cross")
            if self.model is not None or (role == "self" and not self._explicit_layers):
                return None
            if not any(m is layer for m in self._anonymous):
                self._anonymous.append(layer)
            index = next(i for i, m in enumerate(self._anonymous) if m is layer)
            name = (
                f"CrossAttention_{index}"
                if part is None
                else f"{type(layer).__name__}_{index}.{part}"
            )
            if not self._layer_ok(name):
                return None
        return self._claim(name, CROSSATTN)

    def record_call(self, claim: _Claim, call: hooks.AttentionCall) -> None:
        """Keep the maps of a claimed layer call: the weights its op returned, or, where it
        returned none, the weights recomputed from its queries, keys and masks."""
        weights = call.weights
        if weights is None:
            weights = recompute_weights(
                call.query,
                call.key,
                heads="mean" if claim.weights == "mean" else "all",
                scale=call.scale,
                attn_mask=call.attn_mask,
                key_mask=call.key_mask,
                backend=self.backend,
            )
        self._store(claim, weights)

    def _project_once(
        self, module: nn.Module, context: Tensor, project: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """`project(context)`, computed once per module and context tensor while recording."""
        key = id(module)
        entry = self._kv_memo.get(key)
        if (
            entry is not None
            and entry[0]() is context
            and entry[1] == context._version
            and entry[2] == tuple(context.shape)
        ):
            return entry[3]
        with torch.no_grad():
            projected = project(context)
        self._kv_memo[key] = (
            weakref.ref(context),
            context._version,
            tuple(context.shape),
            projected,
        )
        return projected

    def _store(
        self,
        claim: _Claim,
        weights: Tensor,
        *,
        heads_done: bool = False,
        image_hw: tuple[int, int] | None = None,
    ) -> None:
        """Reduce one call's weights ((B, H, L, S) or (B, L, S)) and keep them."""
        name = claim.name
        w = weights.detach()
        if not heads_done or (self.heads != "mean" and w.dim() == 3):
            w = select_heads(w, self.heads, name)
        elif self.heads == "mean" and w.dim() == 4:
            w = w.mean(dim=1)
        if self.grid is not None:
            hw = image_hw or infer_hw(w.shape[-2], self.image_size or self._sample_hw, name)
            w = to_grid(w, self.grid, hw)
            self.query_grid[name] = self.grid
        elif image_hw is not None or self.image_size or self._sample_hw:
            try:
                hw = image_hw or infer_hw(w.shape[-2], self.image_size or self._sample_hw, name)
            except ValueError:
                hw = None
            if hw is not None:
                self.query_grid[name] = hw
        if self.dtype is not None:
            w = w.to(self.dtype)
        if self.top_k is not None:
            w = _top_k(w, self.top_k)
        size = nbytes(w)
        if self.max_bytes is not None and self.nbytes + size > self.max_bytes:
            count = sum(len(v) for v in self.maps.values())
            raise CaptureBudgetError(
                f"AttentionRecorder max_bytes={self.max_bytes} exceeded: {self.nbytes} bytes are "
                f"recorded in {count} maps, and the map of layer {name!r} at step {claim.step} "
                f"(shape {tuple(w.shape)}, {w.dtype}) needs {size} more. Record less: "
                "heads='mean', fewer layers= or steps=, top_k=, grid=, dtype=torch.float16, "
                "or raise max_bytes"
            )
        if self.device is not None:
            w = w.to(self.device)
        self.maps.setdefault(name, []).append(w)
        self.steps.setdefault(name, []).append(claim.step)
        self.timesteps.setdefault(name, []).append(claim.timestep)
        self.nbytes += size

    # ------------------------------------------------------------------ results

    @property
    def layer_names(self) -> list[str]:
        """Names of the layers with recorded maps, in the order they were first recorded."""
        return list(self.maps)

    def to_dense(self) -> dict[str, list[Tensor]]:
        """`maps` with every top-k (sparse) map made dense."""
        return {name: [_to_dense(m) for m in maps] for name, maps in self.maps.items()}

    def concat_steps(self, name: str) -> Tensor:
        """The maps of layer `name` joined along the query axis: (B, [heads,] sum of L, S).

        For greedy decoding with `generate()`, this is each sequence's map over all its
        generated positions. All recorded calls must have the same batch rows.
        """
        maps = self._layer_maps(name)
        return torch.cat([_to_dense(m) for m in maps], dim=-2)

    def follow_beams(
        self, beam_indices: Tensor, *, layers: list[str] | None = None
    ) -> dict[str, Tensor]:
        """The maps of the sequences `generate()` returned, following their beams step by step.

        Args:
            beam_indices: (N, T) long, ``generate(..., num_beams=n, return_dict_in_generate=True,
                output_scores=True).beam_indices``: for returned sequence i and step t, the row
                of the step-t batch (batch index * num_beams + beam) that produced its token;
                -1 after the sequence ended.
            layers: names to follow (default: every recorded layer).

        The maps of calls 0..T-1 of each layer are used: record one generation per recorder
        (or `clear` between generations).

        Returns:
            Layer name -> (N, T, S) (head mean) or (N, T, heads, S): at step t, the map of the
            last query position of row ``beam_indices[i, t]``; zeros where the index is -1.
        """
        from .beams import follow_beams

        names = self.layer_names if layers is None else layers
        return {
            name: follow_beams(self._layer_maps(name), self.steps[name], beam_indices, name)
            for name in names
        }

    def _layer_maps(self, name: str) -> list[Tensor]:
        if name not in self.maps:
            raise KeyError(f"no maps recorded for layer {name!r}; recorded: {self.layer_names}")
        return self.maps[name]

    def clear(self) -> None:
        """Forget the recorded maps (and the call counts)."""
        self.maps.clear()
        self.query_grid.clear()
        self.steps.clear()
        self.timesteps.clear()
        self._calls.clear()
        self.nbytes = 0

    def save(self, path: str | PathLike[str], **metadata: Any) -> None:
        """Write the maps and metadata to one safetensors file (see `crossattn.capture.storage`).

        Keyword arguments are saved with `metadata` (e.g. ``source_tokens=[...]``) and added to
        it once the file is written. Metadata that JSON cannot hold raises TypeError before
        anything is written or added; a failed save leaves no partial file.
        """
        from .storage import check_metadata, save

        merged = {**self.metadata, **metadata}
        check_metadata(merged, metadata)
        save(self, path, merged)
        self.metadata.update(metadata)

    @classmethod
    def load(cls, path: str | PathLike[str]) -> AttentionRecorder:
        """Read a file written by `save`: a recorder (not recording) holding its maps.

        ValueError naming `path` when the file is not a capture `save` wrote.
        """
        from .storage import load

        return load(cls, path)

    def __repr__(self) -> str:
        calls = sum(len(v) for v in self.maps.values())
        return (
            f"AttentionRecorder(layers={len(self.maps)}, maps={calls}, heads={self.heads!r}, "
            f"nbytes={self.nbytes})"
        )
