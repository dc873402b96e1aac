"""Segment Anything interop: load its transformer module without the package ``__init__``.

``segment_anything/__init__.py`` imports the predictor and mask generator, which import
torchvision. The two-way transformer needs only torch, so `load_sam_transformer_module` loads
``segment_anything/modeling/transformer.py`` (and the ``common.py`` beside it) from the installed
package's files under a private package name, running no ``__init__``. Convert a module with
`crossattn.TwoWayTransformer.from_segment_anything`.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

# A private package name, so that no half-initialised ``segment_anything`` enters sys.modules.
_PACKAGE = "_crossattn_segment_anything_modeling"


def sam_modeling_dir() -> Path:
    """The ``segment_anything/modeling`` folder of the installed package (nothing is imported)."""
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "segment_anything is not installed; install it with "
            "`pip install segment-anything==1.0` (crossattn[interop]); torchvision is not needed"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "modeling"
    if not (folder / "transformer.py").is_file():
        raise ImportError(f"no modeling/transformer.py in the segment_anything package at {folder}")
    return folder


def load_sam_transformer_module() -> ModuleType:
    """Return ``segment_anything.modeling.transformer`` loaded from its file, without torchvision.

    The module (with ``TwoWayTransformer``, ``TwoWayAttentionBlock`` and ``Attention``) is loaded
    once under the private package name ``_crossattn_segment_anything_modeling`` and cached in
    ``sys.modules``; its relative import of ``common`` resolves inside that private package.
    Neither ``segment_anything/__init__.py`` nor ``modeling/__init__.py`` runs.

    Example:
        >>> sam = load_sam_transformer_module()
        >>> original = sam.TwoWayTransformer(depth=2, embedding_dim=32, num_heads=4, mlp_dim=64)
        >>> layer = crossattn.TwoWayTransformer.from_segment_anything(original)
    """
    name = f"{_PACKAGE}.transformer"
    if name in sys.modules:
        return sys.modules[name]
    folder = sam_modeling_dir()
    if _PACKAGE not in sys.modules:
        # An empty package whose search path is the modeling folder: submodules load from
        # there, and its __init__.py is never executed.
        spec = importlib.machinery.ModuleSpec(_PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        package = importlib.util.module_from_spec(spec)
        sys.modules[_PACKAGE] = package
    return importlib.import_module(name)
