"""A local page that translates a typed sentence and shows its live alignment.

Standard library only (`http.server.ThreadingHTTPServer`), bound to 127.0.0.1 by default.

    GET  /                 the page: a sentence box and the interactive viewer
    POST /api/translate    {"sentence": "..."} -> {"translation", "source", "target",
                           "alignment" (Pharaoh, source-target), "score", "view"}

``view`` is the viewer's data (see `crossattn.viz.html.payload`): the model's cross-attention
(layers, heads, T target words, S source words) with the word alignment as predicted links.
Bad requests get a 4xx JSON answer ``{"error": message}``: 400 for malformed JSON or an empty
sentence, 413 for a sentence over the word limit or a body over the byte limit. Requests run in
threads; model calls are serialised by a lock (one model, one call at a time).
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._record import as_record
from .html import _asset, payload

__all__ = ["RequestError", "TranslationService", "make_server", "serve_page"]

MAX_BODY_BYTES = 16 * 1024


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a message for the person typing."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class TranslationService:
    """Translate one sentence at a time with a `crossattn.models.Translator` and describe it.

    Args:
        translator: a loaded `Translator`.
        max_words: the longest sentence accepted, in words (capped by what the model takes).
        max_chars: the longest sentence accepted, in characters.
        beam: beam size (1 for greedy decoding).
    """

    def __init__(
        self, translator: Any, *, max_words: int = 64, max_chars: int = 1000, beam: int = 4
    ):
        if not isinstance(max_words, int) or max_words < 1:
            raise ValueError(f"max_words must be a positive int, got {max_words!r}")
        if not isinstance(beam, int) or beam < 1:
            raise ValueError(f"beam must be a positive int, got {beam!r}")
        model_limit = int(translator.model.config.max_len) - 2  # room for BOS and EOS
        self.translator = translator
        self.max_words = max(1, min(max_words, model_limit))
        self.max_chars = max_chars
        self.beam = beam
        self._lock = threading.Lock()

    def answer(self, sentence: Any) -> dict[str, Any]:
        """The JSON answer for one sentence; raises `RequestError` for input it refuses."""
        if not isinstance(sentence, str):
            raise RequestError(400, 'send a JSON object {"sentence": "..."} with a string')
        if len(sentence) > self.max_chars:
            raise RequestError(
                413, f"the sentence has {len(sentence)} characters; the limit is {self.max_chars}"
            )
        words = self.translator.tokenize(sentence)
        if not words:
            raise RequestError(400, "the sentence is empty: type some words to translate")
        if len(words) > self.max_words:
            raise RequestError(
                413, f"the sentence has {len(words)} words; the limit is {self.max_words}"
            )
        import torch

        with self._lock, torch.no_grad():
            result = self.translator.translate(list(words), beam=self.beam)
        source, target = list(result.source_tokens), list(result.target_tokens)
        answer: dict[str, Any] = {
            "translation": " ".join(target),
            "source": source,
            "target": target,
            "alignment": " ".join(f"{i}-{j}" for i, j in result.alignment),
            "score": float(result.score),
            "view": None,
        }
        if target:
            record = as_record(
                result.weights,
                source,
                target,
                predicted=list(result.alignment),
                layer_names=[f"decoder layer {i}" for i in range(result.weights.shape[0])],
            )
            answer["view"] = payload(
                record, title=" ".join(source), caption="\u2192 " + " ".join(target)
            )
        return answer


def serve_page(title: str = "crossattn: translate and align") -> str:
    """The served page: a sentence box above the viewer (same script and style as `to_html`)."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "connect-src 'self'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'\">\n"
        f"<title>{title}</title>\n<style>\n{_asset('viewer.css')}\n{_SERVE_CSS}</style>\n"
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
        f"<script>\n{_asset('viewer.js')}</script>\n"
        f"<script>\n{_SERVE_JS}</script>\n"
        "</body>\n</html>\n"
    )


_SERVE_CSS = """
body { margin: 0; background: #fff; }
.ca-serve { max-width: 1200px; margin: 0 auto; padding: 22px 24px 0; box-sizing: border-box;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #23211d; }
.ca-ask { display: flex; gap: 10px; align-items: center; }
.ca-ask label { font-size: 13px; color: #6b665d; }
.ca-ask input { flex: 1; font: inherit; font-size: 16px; padding: 8px 10px;
  border: 1px solid #d9d4c9; border-radius: 6px; }
.ca-ask button { font: inherit; font-size: 15px; padding: 8px 16px; border: 0; border-radius: 6px;
  background: #23211d; color: #fff; cursor: pointer; }
.ca-status { min-height: 1.4em; margin: 8px 0 0; font-size: 13px; color: #6b665d; }
.ca-status.ca-error { color: #b3202f; }
#ca-live:empty { display: none; }
"""

_SERVE_JS = """
(function () {
  "use strict";
  var form = document.querySelector(".ca-ask");
  var input = document.getElementById("ca-sentence");
  var status = document.querySelector(".ca-status");
  var live = document.getElementById("ca-live");
  var seq = 0;
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var mine = ++seq;
    status.className = "ca-status";
    status.textContent = "Translating\\u2026";
    fetch("/api/translate", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({sentence: input.value})
    }).then(function (r) {
      return r.json().then(function (body) { return {ok: r.ok, body: body}; });
    }).then(function (res) {
      if (mine !== seq) return;
      if (!res.ok) throw new Error(res.body.error || "the server refused the sentence");
      status.textContent = "";
      document.body.setAttribute("data-translation", res.body.translation);
      if (res.body.view) {
        window.crossattnViewer.mount(live, res.body.view);
      } else {
        live.textContent = "";
        status.textContent = "The model produced no words.";
      }
    }).catch(function (err) {
      if (mine !== seq) return;
      status.className = "ca-status ca-error";
      status.textContent = err.message;
    });
  });
})();
"""


def _handler(service: TranslationService, page: str) -> type[BaseHTTPRequestHandler]:
    page_bytes = page.encode("utf-8")

    class Handler(BaseHTTPRequestHandler):
        server_version = "crossattn"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # quiet: the command prints its own address

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            self._send(status, body, "application/json; charset=utf-8")

        def do_GET(self) -> None:  # noqa: N802
            if self.path in ("/", "/index.html"):
                self._send(200, page_bytes, "text/html; charset=utf-8")
            else:
                self._json(404, {"error": f"no page at {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/api/translate":
                self._json(404, {"error": f"no endpoint at {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self._json(400, {"error": "bad Content-Length"})
                return
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                self._json(
                    413, {"error": f"the request is {length} bytes; the limit is {MAX_BODY_BYTES}"}
                )
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except (UnicodeDecodeError, json.JSONDecodeError):
                self._json(400, {"error": "the request body is not JSON"})
                return
            sentence = body.get("sentence") if isinstance(body, dict) else None
            try:
                self._json(200, service.answer(sentence))
            except RequestError as err:
                self._json(err.status, {"error": err.message})
            except ValueError as err:  # the model refused the input
                self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(err)})

    return Handler


def make_server(
    translator: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_words: int = 64,
    beam: int = 4,
) -> ThreadingHTTPServer:
    """A threaded HTTP server for `translator` (call ``serve_forever()``; port 0 picks one).

    Args:
        translator: a `crossattn.models.Translator`.
        host: address to bind (127.0.0.1 keeps it on this machine).
        port: TCP port (0: any free port; read it back from ``server.server_address``).
        max_words: the longest sentence accepted, in words.
        beam: beam size of the translations.
    """
    service = TranslationService(translator, max_words=max_words, beam=beam)
    server = ThreadingHTTPServer((host, port), _handler(service, serve_page()))
    server.daemon_threads = True
    server.service = service  # type: ignore[attr-defined]
    return server
