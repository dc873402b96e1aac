"""The HTTP side of `crossattn serve`: routes, request framing, and JSON answers.

`Handler` answers one connection: it checks the Host, routes the path and method to one method
per route, reads a POST body after checking its framing (`body_length`), and answers every
failure with JSON ``{"error": message}``. `TranslationServer` is the threaded server that holds
what the handlers share: the translation service, the page, and the socket timeout.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
import time
import traceback
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .service import RequestError, TranslationService

__all__ = [
    "MAX_BODY_BYTES",
    "ROUTES",
    "Handler",
    "TranslationServer",
    "body_length",
    "host_allowed",
    "parse_json",
]

MAX_BODY_BYTES = 16 * 1024

# path -> method -> the Handler method that answers it
ROUTES: dict[str, dict[str, str]] = {
    "/": {"GET": "_page", "HEAD": "_page"},
    "/index.html": {"GET": "_page", "HEAD": "_page"},
    "/api/translate": {"POST": "_translate"},
}
_DIGITS = re.compile(r"[0-9]+")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class TranslationServer(ThreadingHTTPServer):
    """A threaded HTTP server of one `TranslationService` and its page.

    Attributes:
        service: the `TranslationService` every request shares.
        page_bytes: the served page, UTF-8.
        socket_timeout: seconds a connection may stay silent (see `Handler.setup`).
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        service: TranslationService,
        page: str,
        socket_timeout: float,
    ):
        self.service = service
        self.page_bytes = page.encode("utf-8")
        self.socket_timeout = socket_timeout
        super().__init__(address, Handler)


def host_allowed(bound: str, host_header: str | None) -> bool:
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


def body_length(headers: Message) -> int:
    """The size of a JSON request body from its headers; `RequestError` for a bad framing.

    One Content-Length (no chunked body) of at most `MAX_BODY_BYTES`, and a Content-Type of
    ``application/json`` in UTF-8. Every refusal closes the connection: the body is not read.
    """
    if "Transfer-Encoding" in headers:
        raise RequestError(
            411, "send the body with a Content-Length (no chunked bodies)", close=True
        )
    lengths = headers.get_all("Content-Length") or []
    if not lengths:
        raise RequestError(411, "the request has no Content-Length", close=True)
    value = lengths[0].strip()
    if len(set(lengths)) > 1 or not _DIGITS.fullmatch(value):
        raise RequestError(
            400,
            f"bad Content-Length {', '.join(lengths)[:40]!r}: send the body's size in bytes",
            close=True,
        )
    value = value.lstrip("0") or "0"
    if len(value) > 9 or int(value) > MAX_BODY_BYTES:
        shown = value if len(value) <= 12 else value[:12] + "..."
        raise RequestError(
            413, f"the request is {shown} bytes; the limit is {MAX_BODY_BYTES}", close=True
        )
    ctype = headers.get_all("Content-Type") or []
    if (
        len(ctype) != 1
        or headers.get_content_type() != "application/json"
        or headers.get_content_charset() not in (None, "utf-8", "utf8")
    ):
        raise RequestError(
            415, "send the body as Content-Type: application/json (UTF-8)", close=True
        )
    return int(value)


def parse_json(raw: bytes) -> Any:
    """A request body's JSON value (an empty body is ``null``); `RequestError` (400) if not."""
    try:
        return json.loads(raw.decode("utf-8") or "null")
    except UnicodeDecodeError as err:
        raise RequestError(400, "the request body is not UTF-8") from err
    except RecursionError as err:
        raise RequestError(400, "the request body is JSON nested too deeply") from err
    except ValueError as err:  # JSONDecodeError, and integers too long to convert
        raise RequestError(400, "the request body is not JSON") from err


class Handler(BaseHTTPRequestHandler):
    """One connection to a `TranslationServer`: every method goes through `_dispatch`."""

    server: TranslationServer
    server_version = "crossattn"

    def setup(self) -> None:
        # Per-connection socket timeout (StreamRequestHandler.setup applies it): an idle, slow or
        # lying client cannot hold a thread for longer than this between two reads.
        self.timeout = self.server.socket_timeout
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # quiet: the command prints its own address

    # ------------------------------------------------------------------ answers

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

    def _safe_json(self, status: int, obj: Any) -> None:
        try:
            self._json(status, obj)
        except OSError:
            self.close_connection = True

    def _refuse(self, status: int, message: str) -> None:
        if self._responded:
            self.close_connection = True
        else:
            self._safe_json(status, {"error": message})

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        """http.server's own errors (bad request line, headers too long, unknown method) as
        JSON rather than its HTML page; the connection closes after them."""
        self.close_connection = True
        short = self.responses.get(code, ("error",))[0]
        self._json(code, {"error": message or short})

    # ------------------------------------------------------------------ routing

    def _dispatch(self) -> None:
        """Route the request; every failure becomes a JSON error answer."""
        self._responded = False
        try:
            self._route()
        except RequestError as err:
            if err.close:
                self.close_connection = True
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

    do_GET = do_HEAD = do_POST = _dispatch  # noqa: N815
    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _dispatch  # noqa: N815

    def _route(self) -> None:
        path = urlsplit(self.path).path
        self._check_host()
        methods = ROUTES.get(path)
        if (methods is None or self.command != "POST") and (
            "Content-Length" in self.headers or "Transfer-Encoding" in self.headers
        ):
            self.close_connection = True  # a body only POST reads: never parse it as a request
        if methods is None:
            raise RequestError(404, f"no page or endpoint at {path}")
        if self.command not in methods:
            allow = ", ".join(methods)
            self._json(
                405,
                {"error": f"{self.command} is not allowed on {path}; use {allow}"},
                {"Allow": allow},
            )
            return
        getattr(self, methods[self.command])()

    def _check_host(self) -> None:
        """DNS rebinding: a web page whose domain now points at 127.0.0.1 would be same-origin
        with this server; a server bound to loopback answers only to loopback names."""
        host = self.headers.get("Host")
        if not host_allowed(self.server.server_address[0], host):
            raise RequestError(
                403,
                f"Host {host!r} is not this machine: a server on a loopback address answers "
                "only requests to localhost, 127.0.0.1 or [::1]",
                close=True,
            )

    # ------------------------------------------------------------------ routes

    def _page(self) -> None:
        """GET or HEAD of the page."""
        self._send(200, self.server.page_bytes, "text/html; charset=utf-8")

    def _translate(self) -> None:
        """POST /api/translate: ``{"sentence": "..."}`` -> the service's answer."""
        body = parse_json(self._read(body_length(self.headers)))
        sentence = body.get("sentence") if isinstance(body, dict) else None
        try:
            answer = self.server.service.answer(sentence)
        except ValueError as err:  # the model refused the input
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, str(err)) from err
        self._json(200, answer)

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
                    raise RequestError(
                        400, f"the body ended after {got} of its {length} bytes", close=True
                    )
                chunks.append(chunk)
                got += len(chunk)
        finally:
            self.connection.settimeout(self.timeout)
        return b"".join(chunks)
