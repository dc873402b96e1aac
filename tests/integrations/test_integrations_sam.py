"""Loading Segment Anything's transformer module without its package __init__ (torchvision)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from crossattn.integrations import segment_anything as sam_integration

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        importlib.util.find_spec("segment_anything") is None,
        reason="segment-anything not installed",
    ),
]


def test_loader_runs_no_package_init_and_needs_no_torchvision():
    code = (
        "import sys\n"
        "from crossattn.integrations.segment_anything import load_sam_transformer_module\n"
        "m = load_sam_transformer_module()\n"
        "t = m.TwoWayTransformer(depth=1, embedding_dim=8, num_heads=2, mlp_dim=16)\n"
        "names = sorted(k for k in sys.modules if k.split('.')[0] in "
        "('segment_anything', 'torchvision'))\n"
        "print(type(t).__name__, len(t.layers), names)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "TwoWayTransformer 1 []"


def test_loader_reads_the_installed_file_and_caches():
    first = sam_integration.load_sam_transformer_module()
    assert sam_integration.load_sam_transformer_module() is first
    folder = sam_integration.sam_modeling_dir()
    assert first.__file__ == str(folder / "transformer.py")
    assert folder.parent.name == "segment_anything"
    for name in ("TwoWayTransformer", "TwoWayAttentionBlock", "Attention"):
        assert hasattr(first, name)


def test_loader_error_when_not_installed(monkeypatch):
    monkeypatch.setattr(sam_integration.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"segment_anything is not installed.*torchvision is not"):
        sam_integration.sam_modeling_dir()
