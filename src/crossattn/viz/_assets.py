"""The viewer's script and style, read from ``viz/assets/`` for the pages to inline.

The script is small modules (``util.js``, ``maps.js``, ... ``main.js``) that share one function
scope: `viewer_script` joins them, in the order the page runs them, into one script that a page
inlines, so a page stays one offline file.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["JS_MODULES", "asset", "viewer_script"]

# The viewer's script, in the order the page runs it: small modules sharing one scope.
JS_MODULES = (
    "util.js", "maps.js", "controls.js", "tokens.js", "image.js", "matrix.js", "overview.js",
    "mount.js", "examples.js", "main.js",
)  # fmt: skip


@cache
def asset(name: str) -> str:
    """The text of one file of ``viz/assets/`` (a module, a style sheet)."""
    return resources.files("crossattn.viz").joinpath("assets", name).read_text(encoding="utf-8")


@cache
def viewer_script() -> str:
    """The whole viewer script: `JS_MODULES` in one function scope, ready to inline."""
    parts = [f"// ---- {m}\n{asset(m)}" for m in JS_MODULES]
    return '(function () {\n  "use strict";\n' + "\n".join(parts) + "})();\n"
