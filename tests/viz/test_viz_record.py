"""The viewers' record (`crossattn.viz._record.as_record`): its keyword arguments."""

from __future__ import annotations

import numpy as np
import pytest

from crossattn.viz._record import RECORD_OPTIONS, as_record


def test_as_record_takes_the_record_options_by_keyword():
    w = np.full((2, 3, 4), 0.25, np.float32)  # (H, L, S)
    rec = as_record(w, list("abcd"), list("xyz"), links="0-1 2p2", layer_names=["only"])
    assert rec.layer_names == ["only"] and rec.shape == (1, 2, 3, 4)
    assert [(k.source, k.target, k.sure) for k in rec.links] == [(0, 1, True), (2, 2, False)]
    assert RECORD_OPTIONS[:2] == ("links", "predicted") and "step" in RECORD_OPTIONS


def test_as_record_refuses_an_unknown_keyword():
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) 'link'; it takes links"):
        as_record(np.ones((2, 2)), link="0-0")
    with pytest.raises(ValueError, match="layer_names has 2 names for weights with 1 layers"):
        as_record(np.ones((2, 2)), layer_names=["a", "b"])
