"""The openai backend against a real HTTP server on 127.0.0.1 that speaks /v1/chat/completions."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
from local_server import LocalServer

from GliomaCompareLib.vlm.openai_backend import OpenAIBackend, RemoteURLRefused, is_loopback_url
from GliomaCompareLib.vlm.parsing import parse_answer
from GliomaCompareLib.vlm.tasks import load_tasks
from GliomaCompareLib.vlm.types import DecodingConfig, Query

DECODING = DecodingConfig(max_new_tokens=64)


class FakeVLMServer(LocalServer):
    """A real HTTP server in a thread. ``respond(payload, n)`` -> ``(status, body, delay_s,
    headers)``: ``body`` a dict (sent as JSON) or a string; ``n`` counts chat requests."""

    def __init__(self, respond, models=("fake-vlm",)):
        self.respond = respond
        self.models = list(models)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status, body, headers=None):
                data = body if isinstance(body, bytes) else (
                    json.dumps(body).encode() if isinstance(body, dict) else str(body).encode()
                )  # fmt: skip
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"data": [{"id": m} for m in server.models]})
                else:
                    self._send(404, {"error": "no such path"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length))
                with server.lock:
                    n = len(server.requests)
                    server.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "payload": payload}
                    )
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": "no such path"})
                    return
                status, body, delay, headers = server.respond(payload, n)
                if delay:
                    time.sleep(delay)
                self._send(status, body, headers)

        self.serve(Handler)


def reply(content=None, refusal=None, logprobs=None) -> dict:
    message = {"role": "assistant", "content": content}
    if refusal is not None:
        message["refusal"] = refusal
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": [choice],
        "usage": {"completion_tokens": 7},
    }


def ok(content):
    return lambda payload, n: (200, reply(content), 0, {})


def task_of(payload) -> str:
    fmt = payload.get("response_format")
    if fmt:
        return fmt["json_schema"]["name"].removeprefix("gliomacompare_")
    text = payload["messages"][0]["content"][1]["text"]
    for task, word in (("grade", "grade ("), ("polygon", "polygon"), ("box", "bounding box")):
        if word in text:
            return task
    return "point"


def decode_image(payload) -> np.ndarray:
    from PIL import Image

    url = payload["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


@pytest.fixture(scope="module")
def tasks():
    return load_tasks()


def make_queries(tasks, names, size=40, score=False):
    rng = np.random.default_rng(0)
    out = []
    for i, name in enumerate(names):
        image = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        out.append(
            Query(image=image, prompt=tasks[name].render(size, size), seed=i, score_options=score)
        )
    return out


def backend_for(url, **kw):
    kw.setdefault("model", "fake-vlm")
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 5.0)
    return OpenAIBackend(url, **kw)


def test_good_answers_and_what_is_sent(tasks, monkeypatch):
    monkeypatch.setenv("GLIOMACOMPARE_API_KEY", "sk-test-secret")
    answers = {
        "grade": '{"grade": "LGG"}',
        "point": '{"x": 10, "y": 12}',
        "box": '{"x_min": 5, "y_min": 6, "x_max": 20, "y_max": 30}',
        "polygon": '{"points": [[5, 5], [20, 5], [20, 20]]}',
    }
    respond = lambda payload, n: (200, reply(answers[task_of(payload)]), 0, {})  # noqa: E731
    names = ["grade", "point", "box", "polygon"]
    with FakeVLMServer(respond) as server:
        backend = backend_for(server.url, concurrency=4)
        queries = make_queries(tasks, names)
        got = backend.answer(queries, DECODING)
    triples = zip(names, got, queries, strict=True)
    statuses = [parse_answer(tasks[n], a.text, q.prompt).status for n, a, q in triples]
    assert statuses == ["ok"] * 4
    assert [a.text for a in got] == [answers[n] for n in names]
    assert all(a.error is None and a.finish_reason == "stop" for a in got)
    assert len(server.requests) == 4
    for request in server.requests:
        payload, headers = request["payload"], request["headers"]
        assert headers["Authorization"] == "Bearer sk-test-secret"
        assert payload["model"] == "fake-vlm"
        assert payload["temperature"] == 0.0 and payload["max_tokens"] == 64
        content = payload["messages"][0]["content"]
        assert [c["type"] for c in content] == ["image_url", "text"]
        name = task_of(payload)
        fmt = payload["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
        query = queries[names.index(name)]
        assert fmt["json_schema"]["schema"] == query.prompt.json_schema
        assert content[1]["text"] == query.prompt.text
        np.testing.assert_array_equal(decode_image(payload), query.image)
    # the key goes in the header only: never in identity, answers or their records
    dumped = json.dumps([backend.identity(), backend.describe()] + [a.to_record() for a in got])
    assert "sk-test-secret" not in dumped


def test_malformed_refused_and_out_of_range_answers(tasks):
    texts = {
        0: ("Sure! The box is (5, 6, 20", None),
        1: ("I'm sorry, I can't help with identifying tumours.", None),
        2: (None, "I cannot assist with medical images."),
        3: ('{"x": 400, "y": 12}', None),
        4: ('{"x_min": 5, "y_min": 6, "x_max": 20, "y_max": 30', None),
    }

    def respond(payload, n):
        index = int(payload["seed"])
        content, refusal = texts[index]
        return 200, reply(content, refusal), 0, {}

    names = ["box", "grade", "point", "point", "box"]
    with FakeVLMServer(respond) as server:
        got = backend_for(server.url, concurrency=2).answer(make_queries(tasks, names), DECODING)
    prompts = [tasks[n].render(40, 40) for n in names]
    triples = zip(names, got, prompts, strict=True)
    parsed = [parse_answer(tasks[n], a.text, p, refused=a.refused) for n, a, p in triples]
    assert [p.status for p in parsed] == ["invalid", "refused", "refused", "invalid", "repaired"]
    assert got[2].refused and got[2].text == "I cannot assist with medical images."
    assert "out_of_bounds" in parsed[3].note


def test_server_error_is_retried_with_backoff(tasks):
    delays = []

    def respond(payload, n):
        if n == 0:
            return 500, {"error": "overloaded"}, 0, {}
        if n == 1:
            return 429, {"error": "slow down"}, 0, {"Retry-After": "0.05"}
        return 200, reply('{"grade": "HGG"}'), 0, {}

    with FakeVLMServer(respond) as server:
        backend = backend_for(server.url, backoff_s=0.01, sleep=lambda s: delays.append(s))
        answer = backend.answer(make_queries(tasks, ["grade"]), DECODING)[0]
    assert answer.error is None and answer.text == '{"grade": "HGG"}'
    assert len(server.requests) == 3
    assert delays[0] == pytest.approx(0.01, rel=0.11)  # first backoff
    assert delays[1] >= 0.05  # Retry-After honoured (exponential 0.02 would be shorter)


def test_client_errors_are_not_retried(tasks):
    respond = lambda payload, n: (404, {"error": "model not found"}, 0, {})  # noqa: E731
    with FakeVLMServer(respond) as server:
        backend = backend_for(server.url, use_response_format=False)
        answer = backend.answer(make_queries(tasks, ["point"]), DECODING)[0]
    assert answer.text is None and "HTTP 404" in answer.error and "model not found" in answer.error
    assert len(server.requests) == 1


def test_a_hanging_server_times_out(tasks):
    respond = lambda payload, n: (200, reply('{"grade": "HGG"}'), 3.0, {})  # noqa: E731
    with FakeVLMServer(respond) as server:
        backend = backend_for(server.url, timeout_s=0.3, max_retries=1)
        start = time.perf_counter()
        answer = backend.answer(make_queries(tasks, ["grade"]), DECODING)[0]
        elapsed = time.perf_counter() - start
    assert answer.text is None
    assert "timeout after 0.3 s" in answer.error and "after 2 attempts" in answer.error
    assert len(server.requests) == 2
    # The server holds each reply 3 s: two attempts that waited for it would take 6 s. The bound
    # is that, not a speed target (the 0.3 s timeout itself is proven by the error text).
    assert elapsed < 6.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_closed_port_gives_a_clear_error(tasks):
    backend = backend_for(f"http://127.0.0.1:{free_port()}", max_retries=2)
    got = backend.answer(make_queries(tasks, ["grade", "box"]), DECODING)
    for answer in got:
        assert answer.text is None
        assert "cannot reach http://127.0.0.1:" in answer.error
        assert "after 3 attempts" in answer.error
    with pytest.raises(ValueError, match="listing the server's models failed"):
        OpenAIBackend(f"http://127.0.0.1:{free_port()}", max_retries=0)


def test_rejected_response_format_falls_back_once_per_server(tasks):
    def respond(payload, n):
        if "response_format" in payload:
            kind = payload["response_format"]["type"]
            return 400, {"error": {"message": f"response_format {kind} is not supported"}}, 0, {}
        return 200, reply('Answer: {"x": 3, "y": 4}'), 0, {}

    with FakeVLMServer(respond) as server:
        backend = backend_for(server.url)
        identity = backend.identity()
        first = backend.answer(make_queries(tasks, ["point"]), DECODING)[0]
        # json_schema, json_object (400 each), Ollama's /api/chat (404 here), then plain
        assert [r["path"] for r in server.requests] == [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/api/chat",
            "/v1/chat/completions",
        ]
        second = backend.answer(make_queries(tasks, ["point", "point"]), DECODING)
        assert len(server.requests) == 6  # no more rejected attempts
    kinds = [r["payload"].get("response_format", {}).get("type") for r in server.requests]
    assert kinds[:2] == ["json_schema", "json_object"] and kinds[3:] == [None] * 3
    assert all(a.meta["structured_output"] == "none" for a in [first, *second])
    assert all(a.text == 'Answer: {"x": 3, "y": 4}' for a in [first, *second])
    assert backend.identity() == identity and identity["response_format"] is True
    assert backend.describe()["structured_output_used"] == "none"


def test_rejected_logprobs_are_dropped_once(tasks):
    def respond(payload, n):
        if "logprobs" in payload:
            return 400, {"error": {"message": "logprobs are not supported"}}, 0, {}
        return 200, reply('{"grade": "HGG"}'), 0, {}

    with FakeVLMServer(respond) as server:
        backend = backend_for(server.url)
        got = backend.answer(make_queries(tasks, ["grade"] * 3, score=True), DECODING)
    assert len(server.requests) == 4  # one rejected request, then three without logprobs
    assert all("response_format" in r["payload"] for r in server.requests)
    assert all(a.text == '{"grade": "HGG"}' for a in got)
    assert got[0].meta == {"structured_output": "json_schema", "dropped_features": ["logprobs"]}
    assert backend.describe()["dropped_features"] == ["logprobs"]


def test_grade_probabilities_from_top_logprobs(tasks):
    content = '{"grade": "HGG"}'
    tokens = ['{"', "grade", '":', ' "', "H", "GG", '"}']
    logprobs = {
        "content": [
            {"token": t, "logprob": -0.01, "top_logprobs": [{"token": t, "logprob": -0.01}]}
            for t in tokens
        ]
    }
    logprobs["content"][4]["top_logprobs"] = [
        {"token": "H", "logprob": math.log(0.6)},
        {"token": "HG", "logprob": math.log(0.1)},
        {"token": "L", "logprob": math.log(0.2)},
        {"token": "The", "logprob": math.log(0.1)},
    ]
    with FakeVLMServer(
        lambda payload, n: (200, reply(content, logprobs=logprobs), 0, {})
    ) as server:
        answer = backend_for(server.url).answer(
            make_queries(tasks, ["grade"], score=True), DECODING
        )[0]
    assert server.requests[0]["payload"]["logprobs"] is True
    assert server.requests[0]["payload"]["top_logprobs"] == 10
    assert answer.option_method == "first_token_top_logprobs"
    assert answer.p_options["HGG"] == pytest.approx(0.7 / 0.9)
    assert answer.p_options["LGG"] == pytest.approx(0.2 / 0.9)


def test_model_listing():
    with FakeVLMServer(ok("{}"), models=["only-one"]) as server:
        assert OpenAIBackend(server.url).model == "only-one"
    with (
        FakeVLMServer(ok("{}"), models=["a", "b"]) as server,
        pytest.raises(ValueError, match="lists 2 models"),
    ):
        OpenAIBackend(server.url)


def test_remote_servers_need_an_explicit_opt_in():
    assert is_loopback_url("http://localhost:8000/v1")
    assert is_loopback_url("http://127.0.0.5:1")
    assert is_loopback_url("http://[::1]:8000")
    assert not is_loopback_url("http://10.0.0.7:8000")
    assert not is_loopback_url("https://api.example.org/v1")
    for url in ("http://10.0.0.7:8000", "https://api.example.org/v1", "http://127.0.0.1.nip.io"):
        with pytest.raises(RemoteURLRefused, match="--allow-remote"):
            OpenAIBackend(url, model="m")
    backend = OpenAIBackend("https://api.example.org", model="m", allow_remote=True)
    assert backend.base_url == "https://api.example.org/v1"
    with pytest.raises(ValueError, match="http"):
        OpenAIBackend("ftp://127.0.0.1/x", model="m")


# ---------------------------------------------------------------- hardening (issue 17)
class RawServer(LocalServer):
    """A recording HTTP server on 127.0.0.1 whose ``handle(handler)`` writes any reply."""

    url_path = ""  # the tests add the path themselves

    def __init__(self, handle):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers),
                     "body": body}
                )  # fmt: skip
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    handle(self)  # the client may give up

            do_GET = do_POST = do_CONNECT = _any

        self.serve(Handler)


def send(handler, status, body: bytes, headers=None):
    handler.send_response(status)
    for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


KEY = "sk-secret-key-0123456789"


def test_a_loopback_server_is_never_reached_through_a_proxy(tasks, monkeypatch):
    with (
        RawServer(lambda h: send(h, 502, b"proxy")) as proxy,
        FakeVLMServer(ok('{"grade": "HGG"}')) as server,
    ):
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        backend = backend_for(server.url, api_key=KEY, max_retries=0)
        answer = backend.answer(make_queries(tasks, ["grade"]), DECODING)[0]
    assert proxy.requests == []
    assert answer.error is None and len(server.requests) == 1


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_an_error_and_not_followed(tasks, code):
    with RawServer(lambda h: send(h, 200, json.dumps(reply('{"grade": "LGG"}')).encode())) as other:

        def redirect(handler):
            send(handler, code, b"", {"Location": other.url + "/v1" + handler.path[3:]})

        with RawServer(redirect) as server:
            backend = backend_for(server.url + "/v1", api_key=KEY, max_retries=2)
            answer = backend.answer(make_queries(tasks, ["grade"]), DECODING)[0]
            with pytest.raises(ValueError, match="redirect"):
                OpenAIBackend(server.url, api_key=KEY, max_retries=0)  # GET /models
    assert answer.text is None and f"HTTP {code}" in answer.error and "redirect" in answer.error
    assert len(server.requests) == 2  # the chat request (not retried) and GET /models
    assert other.requests == []


def test_the_key_is_removed_from_errors_that_quote_a_reply(tasks):
    def echo(handler):
        auth = handler.headers.get("Authorization", "")
        if handler.path.endswith("/chat/completions") and len(echo.seen) == 0:
            body = f"<html>you sent {auth}</html>".encode()
        else:
            body = json.dumps({"unexpected": auth}).encode()
        echo.seen.append(1)
        send(handler, 200, body)

    echo.seen = []
    with RawServer(echo) as server:
        backend = backend_for(server.url + "/v1", api_key=KEY, max_retries=0)
        first, second = (
            backend.answer(make_queries(tasks, [name]), DECODING)[0] for name in ("grade", "box")
        )
    assert "non-JSON" in first.error and "malformed reply" in second.error
    for answer in (first, second):
        assert KEY not in answer.error and "***" in answer.error


def test_the_whole_request_has_a_deadline(tasks):
    def drip(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        for _ in range(1000):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.05)

    with RawServer(drip) as server:
        backend = backend_for(server.url + "/v1", timeout_s=1.0, max_retries=0)
        start = time.perf_counter()
        answer = backend.answer(make_queries(tasks, ["grade"]), DECODING)[0]
        elapsed = time.perf_counter() - start
    assert answer.text is None and "timeout after 1 s" in answer.error
    # The drip lasts 50 s and no single read waits 1 s: a per-read timeout alone would take 50 s.
    assert elapsed < 25.0


def test_an_endless_reply_is_bounded(tasks):
    def endless(handler):
        handler.send_response(200)
        handler.end_headers()
        chunk = b"x" * 65536
        for _ in range(100_000):  # 6.5 GB unless the client stops reading
            handler.wfile.write(chunk)

    with RawServer(endless) as server:
        backend = backend_for(server.url + "/v1", max_retries=0, max_response_bytes=1 << 20)
        answer = backend.answer(make_queries(tasks, ["grade"]), DECODING)[0]
    assert answer.text is None and "larger than 1048576 bytes" in answer.error


def test_urls_with_a_password_or_under_localhost_are_refused():
    with pytest.raises(ValueError, match="user name or password") as caught:
        OpenAIBackend("http://user:pw-s3cret@127.0.0.1:1/v1", model="m")
    assert "pw-s3cret" not in str(caught.value)
    for url in ("http://evil.localhost:8000", "http://localhost.localdomain:8000"):
        with pytest.raises(ValueError, match="names under localhost"):
            OpenAIBackend(url, model="m", allow_remote=True)
    assert not is_loopback_url("http://evil.localhost:8000")


def test_a_name_that_merely_ends_in_localhost_is_a_remote_host():
    # "evillocalhost" is neither localhost nor a name under it: a remote host like any other
    # (refused without the opt-in, accepted with it; not mistaken for a .localhost name)
    for host in ("evillocalhost", "notlocalhost.example", "localhostx"):
        url = f"http://{host}:8000/v1"
        assert not is_loopback_url(url)
        with pytest.raises(RemoteURLRefused, match="--allow-remote"):
            OpenAIBackend(url, model="m")
        assert OpenAIBackend(url, model="m", allow_remote=True).base_url == url
