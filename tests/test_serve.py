"""`crossattn serve`: the local translate-and-align page, its JSON API, limits and concurrency.

The model is a tiny randomly initialised translator written to a model directory in the test.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tiny_translator
from crossattn.models import Translator
from crossattn.viz.server import MAX_BODY_BYTES, make_server

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


def _decoded(view: dict) -> np.ndarray:
    raw = base64.b64decode(view["data"])
    q = np.frombuffer(raw, dtype="<u2" if view["bits"] == 16 else np.uint8).astype(np.float64)
    q = q.reshape(len(view["scales"]), -1) * (
        np.asarray(view["scales"])[:, None] / ((1 << view["bits"]) - 1)
    )
    return q.reshape(len(view["layers"]), view["heads"], view["L"], view["S"])


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
    assert np.abs(_decoded(view) - direct.weights.double().numpy()).max() <= 1.0 / 65535
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
