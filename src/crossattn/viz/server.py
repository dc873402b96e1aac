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
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from ..data.parallel import ALIGNMENT_FORMATS, alignment_as, strip_line_end
from ._record import as_record
from .html import _asset, payload

__all__ = ["RequestError", "TranslationService", "make_server", "serve_page"]

MAX_BODY_BYTES = 16 * 1024
SOCKET_TIMEOUT = 10.0  # seconds; see `make_server`


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a message for the person typing."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _positive_int(name: str, value: Any) -> int:
    """`value` if it is an int (not a bool) of at least 1; TypeError or ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class TranslationService:
    """Translate one sentence at a time with a `crossattn.models.Translator` and describe it.

    Args:
        translator: a loaded `Translator`.
        max_words: the longest sentence accepted, in words (capped by what the model takes).
        max_chars: the longest sentence accepted, in characters.
        beam: beam size (1 for greedy decoding).
        alignment_format: ``"pharaoh"`` (a string ``"0-0 1-2"``) or ``"pairs"`` (``[[0, 0],
            [1, 2]]``): how the answer gives the alignment.
    """

    def __init__(
        self,
        translator: Any,
        *,
        max_words: int = 64,
        max_chars: int = 1000,
        beam: int = 4,
        alignment_format: str = "pharaoh",
    ):
        if alignment_format not in ALIGNMENT_FORMATS:
            raise ValueError(
                f"alignment_format must be one of {ALIGNMENT_FORMATS}, got {alignment_format!r}"
            )
        max_words = _positive_int("max_words", max_words)
        max_chars = _positive_int("max_chars", max_chars)
        beam = _positive_int("beam", beam)
        try:
            model_limit = int(translator.model.config.max_len) - 2  # room for BOS and EOS
        except (AttributeError, TypeError, ValueError) as err:
            raise TypeError(
                "translator must be a loaded crossattn.models.Translator, got "
                f"{type(translator).__name__}"
            ) from err
        self.translator = translator
        self.max_words = max(1, min(max_words, model_limit))
        self.max_chars = max_chars
        self.beam = beam
        self.alignment_format = alignment_format
        self._lock = threading.Lock()

    def answer(self, sentence: Any) -> dict[str, Any]:
        """The JSON answer for one sentence; raises `RequestError` for input it refuses."""
        if not isinstance(sentence, str):
            raise RequestError(400, 'send a JSON object {"sentence": "..."} with a string')
        sentence = strip_line_end(sentence)
        bad = next((c for c in sentence if "\ud800" <= c <= "\udfff"), None)
        if bad is not None:
            raise RequestError(
                400,
                f"the sentence holds a lone UTF-16 surrogate (\\u{ord(bad):04x}), which is not "
                "text: send valid Unicode",
            )
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
        reason = self.translator.too_long(words)  # subwords: a word may be several tokens
        if reason:
            raise RequestError(413, reason)
        import torch

        with self._lock, torch.no_grad():
            result = self.translator.translate(list(words), beam=self.beam)
        source, target = list(result.source_tokens), list(result.target_tokens)
        answer: dict[str, Any] = {
            "translation": " ".join(target),
            "source": source,
            "target": target,
            "alignment": alignment_as(result.alignment, self.alignment_format),
            "score": float(result.score),
            "unknown": result.unknown,  # source words the model does not know (became <unk>)
            "unknown_words": list(result.unknown_words),
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


_ROUTES: dict[str, tuple[str, ...]] = {
    "/": ("GET", "HEAD"),
    "/index.html": ("GET", "HEAD"),
    "/api/translate": ("POST",),
}
_DIGITS = re.compile(r"[0-9]+")


def _handler(
    service: TranslationService, page: str, socket_timeout: float
) -> type[BaseHTTPRequestHandler]:
    page_bytes = page.encode("utf-8")

    class Handler(BaseHTTPRequestHandler):
        server_version = "crossattn"
        # Per-connection socket timeout (set by StreamRequestHandler.setup): an idle, slow or
        # lying client cannot hold a thread for longer than this between two reads.
        timeout = socket_timeout

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # quiet: the command prints its own address

        def _send(
            self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
        ) -> None:
            self._responded = True
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            self._send(status, body, "application/json; charset=utf-8", headers)

        def send_error(self, code: int, message: str | None = None, explain: str | None = None):
            """http.server's own errors (bad request line, headers too long, unknown method) as
            JSON rather than its HTML page; the connection closes after them."""
            self.close_connection = True
            short = self.responses.get(code, ("error",))[0]
            self._json(code, {"error": message or short})

        def _dispatch(self) -> None:
            """Route the request; every failure becomes a JSON error answer."""
            self._responded = False
            try:
                self._route()
            except RequestError as err:
                self._refuse(err.status, err.message)
            except TimeoutError:
                self.close_connection = True
                self._refuse(408, f"the request did not arrive within {self.timeout:g} s")
            except ConnectionError:
                self.close_connection = True  # the client went away: nobody to answer
            except Exception:
                self.close_connection = True
                print(
                    f"crossattn serve: internal error answering {self.command} {self.path}:\n"
                    + traceback.format_exc().rstrip(),
                    file=sys.stderr,
                    flush=True,
                )
                if not self._responded:
                    self._safe_json(500, {"error": "internal server error: see the server log"})

        def _refuse(self, status: int, message: str) -> None:
            if self._responded:
                self.close_connection = True
            else:
                self._safe_json(status, {"error": message})

        def _safe_json(self, status: int, obj: Any) -> None:
            try:
                self._json(status, obj)
            except OSError:
                self.close_connection = True

        def _route(self) -> None:
            path = urlsplit(self.path).path
            if not _host_allowed(self.server.server_address[0], self.headers.get("Host")):
                # DNS rebinding: a web page whose domain now points at 127.0.0.1 would be
                # same-origin with this server; a server bound to loopback answers only to
                # loopback names.
                self.close_connection = True
                raise RequestError(
                    403,
                    f"Host {self.headers.get('Host')!r} is not this machine: a server on a "
                    "loopback address answers only requests to localhost, 127.0.0.1 or [::1]",
                )
            allowed = _ROUTES.get(path)
            if (allowed is None or self.command != "POST") and (
                "Content-Length" in self.headers or "Transfer-Encoding" in self.headers
            ):
                self.close_connection = True  # a body only POST reads: never parse it as a request
            if allowed is None:
                raise RequestError(404, f"no page or endpoint at {path}")
            if self.command not in allowed:
                allow = ", ".join(allowed)
                self._json(
                    405,
                    {"error": f"{self.command} is not allowed on {path}; use {allow}"},
                    {"Allow": allow},
                )
                return
            if self.command in ("GET", "HEAD"):
                self._send(200, page_bytes, "text/html; charset=utf-8")
            else:
                self._translate()

        def _body(self) -> bytes:
            """The request body, after checking its framing; RequestError for a bad one."""
            if "Transfer-Encoding" in self.headers:
                self.close_connection = True
                raise RequestError(411, "send the body with a Content-Length (no chunked bodies)")
            lengths = self.headers.get_all("Content-Length") or []
            if not lengths:
                self.close_connection = True
                raise RequestError(411, "the request has no Content-Length")
            value = lengths[0].strip()
            if len(set(lengths)) > 1 or not _DIGITS.fullmatch(value):
                self.close_connection = True
                raise RequestError(
                    400,
                    f"bad Content-Length {', '.join(lengths)[:40]!r}: "
                    "send the body's size in bytes",
                )
            value = value.lstrip("0") or "0"
            if len(value) > 9 or int(value) > MAX_BODY_BYTES:
                self.close_connection = True
                shown = value if len(value) <= 12 else value[:12] + "..."
                raise RequestError(
                    413, f"the request is {shown} bytes; the limit is {MAX_BODY_BYTES}"
                )
            length = int(value)
            ctype = self.headers.get_all("Content-Type") or []
            if (
                len(ctype) != 1
                or self.headers.get_content_type() != "application/json"
                or self.headers.get_content_charset() not in (None, "utf-8", "utf8")
            ):
                self.close_connection = True
                raise RequestError(415, "send the body as Content-Type: application/json (UTF-8)")
            return self._read(length)

        def _read(self, length: int) -> bytes:
            """`length` bytes within `timeout` seconds in all (a trickling client gets 408)."""
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            read = getattr(self.rfile, "read1", self.rfile.read)
            chunks: list[bytes] = []
            got = 0
            try:
                while got < length:
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise TimeoutError
                        self.connection.settimeout(left)
                    chunk = read(length - got)
                    if not chunk:
                        self.close_connection = True
                        raise RequestError(400, f"the body ended after {got} of its {length} bytes")
                    chunks.append(chunk)
                    got += len(chunk)
            finally:
                self.connection.settimeout(self.timeout)
            return b"".join(chunks)

        def _translate(self) -> None:
            raw = self._body()
            try:
                body = json.loads(raw.decode("utf-8") or "null")
            except UnicodeDecodeError as err:
                raise RequestError(400, "the request body is not UTF-8") from err
            except RecursionError as err:
                raise RequestError(400, "the request body is JSON nested too deeply") from err
            except ValueError as err:  # JSONDecodeError, and integers too long to convert
                raise RequestError(400, "the request body is not JSON") from err
            sentence = body.get("sentence") if isinstance(body, dict) else None
            try:
                answer = service.answer(sentence)
            except ValueError as err:  # the model refused the input
                raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, str(err)) from err
            self._json(200, answer)

        do_GET = do_HEAD = do_POST = _dispatch  # noqa: N815
        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _dispatch  # noqa: N815

    return Handler


_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _host_allowed(bound: str, host_header: str | None) -> bool:
    """Whether a request's Host may reach a server bound to `bound`: any Host unless the server
    is on a loopback address; then only loopback names (a missing Host, from HTTP/1.0, passes)."""
    try:
        loopback = ipaddress.ip_address(bound).is_loopback
    except ValueError:
        loopback = bound == "localhost"
    if not loopback or host_header is None:
        return True
    name = urlsplit("//" + host_header.strip()).hostname or ""
    return name.lower() in _LOOPBACK_NAMES or name.lower().endswith(".localhost")


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
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
    service = TranslationService(
        translator,
        max_words=max_words,
        max_chars=max_chars,
        beam=beam,
        alignment_format=alignment_format,
    )
    server = ThreadingHTTPServer((host, port), _handler(service, serve_page(), float(timeout)))
    server.daemon_threads = True
    server.service = service  # type: ignore[attr-defined]
    return server
