"""`crossattn serve`: the local translate-and-align page, its JSON API, limits and concurrency.

The model is a tiny randomly initialised translator written to a model directory in the test.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from crossattn.models import Translator
from crossattn.viz.server import MAX_BODY_BYTES, TranslationService, make_server
from tests.conftest import decode_view, write_tiny_translator

SOURCE_WORDS = "le la un une chat chien noir blanc dort mange sur tapis rouge petit".split()
TARGET_WORDS = "the a cat dog black white sleeps eats on mat red little".split()
MAX_LEN = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model")
    return write_tiny_translator(out, SOURCE_WORDS, TARGET_WORDS, max_len=MAX_LEN)


@pytest.fixture(scope="module")
def translator(model_dir) -> Translator:
    return Translator.load(model_dir)


@pytest.fixture(scope="module")
def server(translator):
    srv = make_server(translator, "127.0.0.1", 0, max_words=10, beam=1)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    host, port = srv.server_address[:2]
    srv.url = f"http://{host}:{port}/"
    yield srv
    srv.shutdown()
    srv.server_close()


def _post(url: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url + "api/translate", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_translate_answer_matches_the_model(server, translator):
    sentence = "le petit chat noir dort"
    status, answer = _post(server.url, {"sentence": sentence})
    assert status == 200
    direct = translator.translate(sentence, beam=1)
    assert answer["source"] == sentence.split()
    assert answer["target"] == list(direct.target_tokens) and len(answer["target"]) > 0
    assert answer["translation"] == " ".join(direct.target_tokens)
    assert answer["alignment"] == direct.pharaoh()
    view = answer["view"]
    assert view["source"] == answer["source"] and view["target"] == answer["target"]
    assert view["layers"] == ["decoder layer 0", "decoder layer 1"] and view["heads"] == 2
    assert np.abs(decode_view(view) - direct.weights.double().numpy()).max() <= 1.0 / 65535
    assert view["predicted"] == sorted([j, i] for i, j in direct.alignment)


def test_limits_and_bad_requests(server):
    status, answer = _post(server.url, {"sentence": " ".join(["chat"] * 11)})
    assert status == 413 and answer["error"] == "the sentence has 11 words; the limit is 10"
    status, answer = _post(server.url, {"sentence": "   "})
    assert status == 400 and "empty" in answer["error"]
    status, answer = _post(server.url, {"text": "chat"})
    assert status == 400 and '{"sentence": "..."}' in answer["error"]
    status, answer = _post(server.url, b"{not json")
    assert status == 400 and answer["error"] == "the request body is not JSON"
    status, answer = _post(server.url, {"sentence": "x" * (MAX_BODY_BYTES + 1)})
    assert status == 413 and "the limit is 16384" in answer["error"]
    status, answer = _post(server.url, {"sentence": "chat " + "y" * 1000})
    assert status == 413 and "characters; the limit is 1000" in answer["error"]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "nothing", timeout=10)
    assert err.value.code == 404


def test_page_is_served_self_contained(server):
    with urllib.request.urlopen(server.url, timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        page = r.read().decode()
    assert "connect-src 'self'" in page and "crossattnViewer" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page


def test_concurrent_requests(server, translator):
    sentences = [
        "le chat",
        "un chien blanc",
        "la souris",
        "le tapis rouge",
        "une chat mange",
        "sur",
    ]
    expected = {s: translator.translate(s, beam=1) for s in sentences}
    with ThreadPoolExecutor(max_workers=len(sentences)) as pool:
        answers = list(pool.map(lambda s: _post(server.url, {"sentence": s}), sentences))
    assert [status for status, _ in answers] == [200] * len(sentences)
    # Every answer belongs to its own request: the sentences differ in their source words and
    # (as the model translates several alike) in their score and alignment.
    for s, (_, a) in zip(sentences, answers, strict=True):
        want = expected[s]
        assert a["source"] == s.split()
        assert a["translation"] == " ".join(want.target_tokens)
        assert a["alignment"] == " ".join(f"{i}-{j}" for i, j in want.alignment)
        assert a["score"] == pytest.approx(want.score, abs=1e-5)
    assert len({a["score"] for _, a in answers}) == len(sentences)


def test_the_model_limit_caps_max_words(translator):
    srv = make_server(translator, "127.0.0.1", 0, max_words=1000)
    try:
        assert srv.service.max_words == MAX_LEN - 2
    finally:
        srv.server_close()
    with pytest.raises(ValueError, match="max_words must be a positive int, got 0"):
        make_server(translator, "127.0.0.1", 0, max_words=0)


# ---------------------------------------------------------------- hardening


def _raw(url: str, data: bytes, method: str = "POST", timeout: float = 10):
    """Send raw request bytes; (status, headers, JSON body or None, seconds taken)."""
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        body = resp.read()
    took = time.monotonic() - start
    return resp.status, resp.headers, json.loads(body) if body else None, took


def _request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    head = {"Host": "localhost", "Content-Type": "application/json"}
    if method in ("POST", "PUT") or body:
        head["Content-Length"] = str(len(body))
    head.update(headers or {})
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in head.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _still_answers(server) -> None:
    status, answer = _post(server.url, {"sentence": "le chat"})
    assert status == 200 and answer["source"] == ["le", "chat"]


def test_deep_json_and_bad_bodies_get_400(server):
    for data, message in [
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b'{"sentence": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (b'{"sentence": "\xff chat"}', "not UTF-8"),
        (b'{"sentence": ' + b"9" * 5000 + b"}", "not JSON"),
        (b"", '{"sentence": "..."}'),
    ]:
        status, headers, answer, _ = _raw(server.url, _request("POST", "/api/translate", data))
        assert status == 400 and message in answer["error"], (data[:20], answer)
        assert headers["Content-Type"].startswith("application/json")
    _still_answers(server)


def test_lone_surrogate_is_a_bad_request(server):
    status, answer = _post(server.url, b'{"sentence": "\\ud800 chat"}')
    assert status == 400 and "surrogate" in answer["error"] and "\\ud800" in answer["error"]
    _still_answers(server)


def test_internal_errors_answer_500_and_log_once(server, monkeypatch, capsys):
    def boom(sentence):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(server.service, "answer", boom)
    status, answer = _post(server.url, {"sentence": "le chat"})
    assert status == 500 and answer == {"error": "internal server error: see the server log"}
    err = capsys.readouterr().err
    assert err.count("Traceback") == 1 and "secret internal detail" in err
    monkeypatch.undo()
    _still_answers(server)


@pytest.mark.parametrize(
    ("length", "status", "message"),
    [
        ("-1", 400, "bad Content-Length '-1'"),
        ("abc", 400, "bad Content-Length 'abc'"),
        ("1e3", 400, "bad Content-Length"),
        ("+5", 400, "bad Content-Length"),
        (None, 411, "no Content-Length"),
        ("9" * 30, 413, "the limit is 16384"),
    ],
)
def test_bad_content_length(server, length, status, message):
    data = _request("POST", "/api/translate", b"", {"Content-Length": length})
    got, headers, answer, took = _raw(server.url, data)
    assert got == status and message in answer["error"] and took < 5
    assert headers["Connection"] == "close"
    _still_answers(server)


def test_chunked_bodies_are_refused(server):
    data = _request(
        "POST",
        "/api/translate",
        b"0\r\n\r\n",
        {"Transfer-Encoding": "chunked", "Content-Length": None},
    )
    status, _, answer, _ = _raw(server.url, data)
    assert status == 411 and "Content-Length" in answer["error"]
    _still_answers(server)


@pytest.mark.slow
def test_slow_or_lying_clients_time_out(translator):
    srv = make_server(translator, "127.0.0.1", 0, max_words=10, beam=1, timeout=0.5)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    host, port = srv.server_address[:2]
    srv.url = f"http://{host}:{port}/"
    try:
        # A body shorter than its Content-Length, the connection left open: 408, not a hang.
        head = _request("POST", "/api/translate", b"", {"Content-Length": "50"})
        status, headers, answer, took = _raw(srv.url, head + b'{"sen')
        assert status == 408 and "0.5 s" in answer["error"] and took < 3
        assert headers["Connection"] == "close"
        # A client trickling its body a byte at a time cannot outlast the timeout either.
        body = json.dumps({"sentence": "le chat"}).encode()
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(_request("POST", "/api/translate", b"", {"Content-Length": "100"}))
            start = time.monotonic()
            try:
                for byte in body:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.1)
            except OSError:
                pass  # the server gave up on us
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            assert resp.status == 408 and time.monotonic() - start < 3
        # A body that ends (the client half-closes) before its Content-Length: 400.
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(head + b'{"sen')
            sock.shutdown(socket.SHUT_WR)
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            assert resp.status == 400
            assert "ended after 5 of its 50 bytes" in json.loads(resp.read())["error"]
        # An idle connection is closed.
        with socket.create_connection((host, port), timeout=10) as sock:
            start = time.monotonic()
            assert sock.recv(100) == b"" and time.monotonic() - start < 3
        _still_answers(srv)
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
@pytest.mark.parametrize(("path", "allow"), [("/api/translate", "POST"), ("/", "GET, HEAD")])
def test_other_methods_get_405_with_allow(server, method, path, allow):
    status, headers, answer, _ = _raw(server.url, _request(method, path, b"{}"), method)
    assert status == 405 and headers["Allow"] == allow
    assert method in answer["error"] and allow in answer["error"]
    assert headers["Content-Type"].startswith("application/json")
    _still_answers(server)


def test_wrong_method_on_known_paths_and_query_strings(server):
    status, headers, answer, _ = _raw(server.url, _request("GET", "/api/translate"), "GET")
    assert status == 405 and headers["Allow"] == "POST" and "GET" in answer["error"]
    data = _request("POST", "/", json.dumps({"sentence": "le chat"}).encode())
    status, headers, answer, _ = _raw(server.url, data)
    assert status == 405 and headers["Allow"] == "GET, HEAD" and "POST" in answer["error"]
    with urllib.request.urlopen(server.url + "?q=1", timeout=10) as r:
        assert r.status == 200 and "crossattnViewer" in r.read().decode()
    status, _, answer, _ = _raw(
        server.url, _request("POST", "/api/translate?v=1", b'{"sentence": "le chat"}')
    )
    assert status == 200 and answer["source"] == ["le", "chat"]
    # HEAD is GET without the body; an unknown method is 501, in JSON.
    status, headers, answer, _ = _raw(server.url, _request("HEAD", "/"), "HEAD")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and answer is None
    assert int(headers["Content-Length"]) > 1000
    status, headers, answer, _ = _raw(server.url, _request("BREW", "/"), "BREW")
    assert status == 501 and "BREW" in answer["error"]
    assert headers["Content-Type"].startswith("application/json")
    _still_answers(server)


@pytest.mark.parametrize(
    "ctype",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/jsonx", "application/json; charset=latin-1"],
)  # fmt: skip
def test_content_type_must_be_json(server, ctype):
    data = _request("POST", "/api/translate", b'{"sentence": "le chat"}', {"Content-Type": ctype})
    status, _, answer, _ = _raw(server.url, data)
    assert status == 415 and "application/json" in answer["error"]
    _still_answers(server)


@pytest.mark.parametrize(
    "ctype", ["application/json", "Application/JSON", "application/json; charset=UTF-8"]
)
def test_json_content_types_are_accepted(server, ctype):
    data = _request("POST", "/api/translate", b'{"sentence": "le chat"}', {"Content-Type": ctype})
    status, _, answer, _ = _raw(server.url, data)
    assert status == 200 and answer["source"] == ["le", "chat"]


def test_the_page_posts_json(server):
    with urllib.request.urlopen(server.url, timeout=10) as r:
        page = r.read().decode()
    assert 'headers: {"Content-Type": "application/json"}' in page


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"beam": True}, TypeError, "beam must be a positive int, got True (bool)"),
        ({"beam": 0}, ValueError, "beam must be a positive int, got 0"),
        ({"beam": 2.0}, TypeError, "beam must be a positive int"),
        ({"max_chars": None}, TypeError, "max_chars must be a positive int, got None"),
        ({"max_chars": -1}, ValueError, "max_chars must be a positive int, got -1"),
        ({"max_chars": "10"}, TypeError, "max_chars must be a positive int"),
        ({"max_words": False}, TypeError, "max_words must be a positive int, got False"),
        ({"max_words": -3}, ValueError, "max_words must be a positive int, got -3"),
        (
            {"alignment_format": "links"},
            ValueError,
            "alignment_format must be one of 'pharaoh', 'pairs'; got 'links'",
        ),
    ],
)
def test_service_arguments_are_validated(translator, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        TranslationService(translator, **kwargs)
    with pytest.raises(error, match=re.escape(message)):
        make_server(translator, "127.0.0.1", 0, **kwargs)


def test_server_arguments_are_validated(translator):
    with pytest.raises(TypeError, match="translator must be a loaded"):
        TranslationService(object())
    with pytest.raises(ValueError, match=r"timeout \(seconds\) must be a positive finite real"):
        make_server(translator, "127.0.0.1", 0, timeout=0)
    with pytest.raises(
        TypeError, match=r"timeout \(seconds\) must be a positive finite real .*'10'"
    ):
        make_server(translator, "127.0.0.1", 0, timeout="10")
    with pytest.raises(TypeError, match=r"timeout \(seconds\) must be .*, got True \(bool\)"):
        make_server(translator, "127.0.0.1", 0, timeout=True)
    service = TranslationService(translator, max_chars=5, beam=1)
    assert service.max_chars == 5 and service.beam == 1


@pytest.mark.slow
def test_serve_command(model_dir, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "crossattn", "serve", "--model", str(model_dir), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving {model_dir} at http://127.0.0.1:"), (
            line + proc.stderr.read()
        )
        url = line.split(" at ", 1)[1].split()[0]
        status, answer = _post(url, {"sentence": "le chat noir"})
        assert status == 200 and answer["source"] == ["le", "chat", "noir"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    result = subprocess.run(
        [sys.executable, "-m", "crossattn", "serve", "--model", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "is missing: is" in result.stderr


# ---------------------------------------------------------------- in the browser


@pytest.mark.browser
def test_page_translates_a_typed_sentence(server, translator, browser):
    sentence = "le petit chien mange"
    direct = translator.translate(sentence, beam=1)
    page = browser.new_page()
    try:
        requests: list[str] = []
        errors: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url)
        page.fill("#ca-sentence", sentence)
        page.press("#ca-sentence", "Enter")
        page.wait_for_selector("#ca-live[data-ready]", timeout=20_000)
        targets = page.eval_on_selector_all(
            "#ca-live .ca-tok[data-side=target]", "es => es.map(e => e.textContent)"
        )
        assert targets == list(direct.target_tokens)
        sources = page.eval_on_selector_all(
            "#ca-live .ca-tok[data-side=source]", "es => es.map(e => e.textContent)"
        )
        assert sources == sentence.split()
        # Hovering a target word lights the source words it attends to (layer 0, head mean).
        page.hover("#ca-live .ca-tok[data-side=target][data-i='0']")
        row = direct.weights[0].mean(0)[0].numpy()
        lit = page.eval_on_selector_all(
            "#ca-live .ca-tok[data-side=source]", "es => es.map(e => e.dataset.w != null)"
        )
        assert lit == [bool(v >= 0.1) for v in row] or np.any(np.abs(row - 0.1) < 1e-3)
        # A sentence over the limit: the page says why.
        page.fill("#ca-sentence", " ".join(["chat"] * 12))
        page.press("#ca-sentence", "Enter")
        page.wait_for_selector(".ca-status.ca-error", timeout=10_000)
        assert page.text_content(".ca-status") == "the sentence has 12 words; the limit is 10"
        assert errors == []
        assert all(u.startswith(server.url) for u in requests), requests
    finally:
        page.close()


@pytest.mark.parametrize(
    ("host", "status"),
    [("evil.example", 403), ("evil.example:80", 403), ("127.0.0.1", 200), ("localhost", 200),
     ("[::1]", 200), ("app.localhost", 200)],
)  # fmt: skip
def test_a_loopback_server_answers_only_loopback_host_names(server, host, status):
    """DNS rebinding: a page whose domain now resolves to 127.0.0.1 sends its own Host."""
    port = server.server_address[1]
    name = host if ":" in host and not host.startswith("[") else f"{host}:{port}"
    req = urllib.request.Request(server.url, headers={"Host": name})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            got, body = r.status, r.read()
    except urllib.error.HTTPError as err:
        got, body = err.code, err.read()
    assert got == status
    if status == 403:
        assert "is not this machine" in json.loads(body)["error"]
    # and the server still answers the next request
    assert _post(server.url, {"sentence": "le chat"})[0] == 200
