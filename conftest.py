"""Runs every code block of README.md as a test (pytest-codeblocks, `--codeblocks`).

Each block runs in a fresh temporary directory, so the files the examples write (figures,
viewer pages, corpora) land there and not in the checkout. Markers in HTML comments before a
block say how to run it: `<!--pytest-codeblocks:cont-->` continues the previous block,
`<!--pytest.mark.skip(reason=...)-->` skips a signature, a sketch or a shell session.
"""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    if item.path.suffix != ".md":
        return (yield)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="crossattn-readme-") as tmp:
        os.chdir(tmp)
        try:
            return (yield)
        finally:
            os.chdir(cwd)
