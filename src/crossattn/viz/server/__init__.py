"""A local page that translates a typed sentence and shows its live alignment.

Standard library only (`http.server.ThreadingHTTPServer`), bound to 127.0.0.1 by default.

    GET  /                 the page: a sentence box and the interactive viewer
    POST /api/translate    {"sentence": "..."} -> {"translation", "source", "target",
                           "alignment", "score", "view"}

``source`` and ``target`` are token lists; ``alignment`` is a Pharaoh string ``"0-0 1-2"``
(source-target, 0-indexed), as ``crossattn translate --json`` gives it, or with
``alignment_format="pairs"`` a list of ``[i, j]``. A trailing line end of the sentence
(``"\n"``, ``"\r\n"`` or ``"\r"``) is removed.

``view`` is the viewer's data (see `crossattn.viz.html.payload`): the model's cross-attention
(layers, heads, T target words, S source words) with the word alignment as predicted links.
Every failure gets a JSON answer ``{"error": message}``: 400 for a malformed body, JSON nested too
deeply, a bad Content-Length, a body shorter than it, or a sentence that is empty or not valid
Unicode; 404 for an unknown path; 405 (with ``Allow``) for a method the path does not take; 408
when a request does not arrive within the socket timeout; 411 without a Content-Length; 413 for a
sentence over the word or character limit or a body over the byte limit; 415 unless the body is
``Content-Type: application/json`` (which makes a browser ask a CORS preflight, never granted, so
other web pages cannot drive the model); 500, logged to stderr, for an internal error. Requests run
in threads; model calls are serialised by a lock (one model, one call at a time).

The parts: `service` (a sentence in, a JSON answer out), `handler` (HTTP routes and framing), and
the page's script and style in ``viz/assets/`` (``serve.js``, ``serve.css``).
"""

from __future__ import annotations

from http.server import ThreadingHTTPServer
from typing import Any

from ... import _checks
from .._assets import asset, viewer_script
from .handler import MAX_BODY_BYTES, TranslationServer
from .service import RequestError, TranslationService

__all__ = [
    "MAX_BODY_BYTES",
    "SOCKET_TIMEOUT",
    "RequestError",
    "TranslationService",
    "make_server",
    "serve_page",
]

SOCKET_TIMEOUT = 10.0  # seconds; see `make_server`


def serve_page(title: str = "crossattn: translate and align") -> str:
    """The served page: a sentence box above the viewer (same script and style as `to_html`)."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "connect-src 'self'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'\">\n"
        f"<title>{title}</title>\n<style>\n{asset('viewer.css')}\n{asset('serve.css')}</style>\n"
        "</head>\n<body>\n"
        '<main class="ca-serve">\n'
        '<form class="ca-ask" autocomplete="off">\n'
        '<label for="ca-sentence">Sentence</label>\n'
        '<input id="ca-sentence" name="sentence" type="text" placeholder="Type a sentence" '
        "autofocus>\n"
        '<button type="submit">Translate</button>\n'
        "</form>\n"
        '<p class="ca-status" role="status"></p>\n'
        "</main>\n"
        '<div class="ca-viewer" id="ca-live"></div>\n'
        f"<script>\n{viewer_script()}</script>\n"
        f"<script>\n{asset('serve.js')}</script>\n"
        "</body>\n</html>\n"
    )


def make_server(
    translator: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_words: int = 64,
    max_chars: int = 1000,
    beam: int = 4,
    timeout: float = SOCKET_TIMEOUT,
    alignment_format: str = "pharaoh",
) -> ThreadingHTTPServer:
    """A threaded HTTP server for `translator` (call ``serve_forever()``; port 0 picks one).

    Args:
        translator: a `crossattn.models.Translator`.
        host: address to bind (127.0.0.1 keeps it on this machine).
        port: TCP port (0: any free port; read it back from ``server.server_address``).
        max_words: the longest sentence accepted, in words.
        max_chars: the longest sentence accepted, in characters.
        beam: beam size of the translations.
        timeout: seconds a connection may stay silent, and the most a request body may take to
            arrive, before the server answers 408 and closes it.
        alignment_format: ``"pharaoh"`` or ``"pairs"``, see `TranslationService`.

    Returns:
        The server; its ``service`` attribute is the `TranslationService` it answers with.
    """
    timeout = _checks.positive_real(timeout, "timeout (seconds)")
    service = TranslationService(
        translator,
        max_words=max_words,
        max_chars=max_chars,
        beam=beam,
        alignment_format=alignment_format,
    )
    return TranslationServer((host, port), service, serve_page(), timeout)
