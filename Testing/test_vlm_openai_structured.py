"""Structured output of the openai backend against real HTTP servers on 127.0.0.1 that each
take ONE request shape (``response_format`` json_schema, json_object, Ollama's ``/api/chat``
``format``, or none), answering the others as such servers do (their error texts are modelled
on vLLM, llama.cpp's server and Ollama; no real server runs here)."""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
from local_server import LocalServer

from GliomaCompareLib.argtypes import add_dataclass_arguments, dataclass_from_args
from GliomaCompareLib.pipeline.config import parse_run_config
from GliomaCompareLib.vlm.backends import BackendSettings, make_backend
from GliomaCompareLib.vlm.openai_backend import STRUCTURED_OUTPUTS, OpenAIBackend
from GliomaCompareLib.vlm.parsing import parse_answer
from GliomaCompareLib.vlm.tasks import load_tasks
from GliomaCompareLib.vlm.types import DecodingConfig, Query

DECODING = DecodingConfig(max_new_tokens=64)
MOVED = "does not take structured output"

ANSWERS = {
    "grade": '{"grade": "LGG"}',
    "point": '{"x": 10, "y": 12}',
    "box": '{"x_min": 5, "y_min": 6, "x_max": 20, "y_max": 30}',
    "polygon": '{"points": [[5, 5], [20, 5], [20, 20]]}',
}
VALUES = {
    "grade": "LGG",
    "point": (10.0, 12.0),
    "box": (5.0, 6.0, 20.0, 30.0),
    "polygon": ((5.0, 5.0), (20.0, 5.0), (20.0, 20.0)),
}

# what servers answer to a shape they do not take (texts modelled on the real ones)
REJECTIONS = {
    # llama.cpp's server before json_schema (server-common.cpp, oaicompat_chat_params_parse)
    "json_schema": (
        400,
        {
            "error": {
                "code": 400,
                "type": "invalid_request_error",
                "message": 'response_format type must be one of "text" or "json_object", '
                "but got: json_schema",
            }
        },
    ),
    # a pydantic-style validation error, as FastAPI servers give it
    "json_object": (
        422,
        {"detail": [{"loc": ["body", "response_format", "type"], "msg": "unexpected value"}]},
    ),
    # not an Ollama: no /api/chat
    "ollama": (404, {"error": "404 page not found"}),
}


def request_shape(path: str, payload: dict) -> str:
    if path == "/api/chat":
        return "ollama" if "format" in payload else "ollama-plain"
    fmt = payload.get("response_format")
    return fmt["type"] if fmt else "none"


def prompt_text(payload: dict) -> str:
    content = payload["messages"][0]["content"]
    return content if isinstance(content, str) else content[1]["text"]


def image_of(path: str, payload: dict) -> np.ndarray:
    from PIL import Image

    message = payload["messages"][0]
    if path == "/api/chat":
        data = message["images"][0]
    else:
        url = message["content"][0]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        data = url.split(",", 1)[1]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


class OneShapeServer(LocalServer):
    """A real HTTP server in a thread taking only the structured-output shape ``accepts`` (and
    plain requests, as every server does). It answers each task from the prompt text, chatty
    when unconstrained; ``fail_first`` sends HTTP 500 to the first accepted request."""

    def __init__(self, accepts: str, prompts: dict, *, fail_first=False, logprobs=None):
        self.accepts = accepts
        self.prompts = prompts  # prompt text -> task
        self.fail_first = fail_first
        self.logprobs = logprobs
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"data": [{"id": "fake-vlm"}]})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(
                        {"path": self.path, "host": self.headers["Host"], "payload": payload}
                    )
                    status, body = server.respond(self.path, payload)
                self._send(status, body)

        self.serve(Handler)

    def respond(self, path: str, payload: dict) -> tuple[int, dict]:
        if path not in ("/v1/chat/completions", "/api/chat"):
            return 404, {"error": "404 page not found"}
        shape = request_shape(path, payload)
        if path == "/api/chat" and self.accepts != "ollama":
            return REJECTIONS["ollama"]
        if shape not in (self.accepts, "none"):
            return REJECTIONS.get(shape, (400, {"error": "bad request"}))
        if self.fail_first:
            self.fail_first = False
            return 500, {"error": "overloaded"}
        text = ANSWERS[self.prompts[prompt_text(payload)]]
        if shape == "none":
            text = f"Sure, here it is: {text}"
        if shape == "ollama":
            reply = {"model": "fake-vlm", "message": {"role": "assistant", "content": text}}
            reply.update(done=True, done_reason="stop", eval_count=9)
            if self.logprobs is not None:
                reply["logprobs"] = self.logprobs
            return 200, reply
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        choice["finish_reason"] = "stop"
        return 200, {"choices": [choice], "usage": {"completion_tokens": 9}}

    def shapes(self) -> list[str]:
        return [request_shape(r["path"], r["payload"]) for r in self.requests]


@pytest.fixture(scope="module")
def tasks():
    return load_tasks()


NAMES = ["grade", "point", "box", "polygon"]


def make_queries(tasks, names, size=40, score=False):
    rng = np.random.default_rng(1)
    return [
        Query(
            image=(rng.random((size, size, 3)) * 255).astype(np.uint8),
            prompt=tasks[name].render(size, size),
            seed=i,
            score_options=score,
        )
        for i, name in enumerate(names)
    ]


def prompts_of(queries) -> dict:
    return {q.prompt.text: q.prompt.task for q in queries}


def backend_for(url, **kw):
    kw.setdefault("model", "fake-vlm")
    kw.setdefault("backoff_s", 0.001)
    kw.setdefault("timeout_s", 5.0)
    return OpenAIBackend(url, **kw)


def check_answers(tasks, queries, answers, shape):
    for query, answer in zip(queries, answers, strict=True):
        assert answer.error is None, answer.error
        parsed = parse_answer(tasks[query.prompt.task], answer.text, query.prompt)
        assert parsed.usable and parsed.value == VALUES[query.prompt.task]
        assert answer.meta["structured_output"] == shape


def moves(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if MOVED in r.getMessage()]


@pytest.mark.parametrize(
    ("accepts", "tried"),
    [
        ("json_schema", []),
        ("json_object", ["json_schema"]),
        ("ollama", ["json_schema", "json_object"]),
        ("none", ["json_schema", "json_object", "ollama"]),
    ],
)
def test_auto_finds_the_one_shape_a_server_takes(tasks, caplog, accepts, tried):
    caplog.set_level(logging.WARNING, logger="GliomaCompareLib.vlm.openai_backend")
    queries = make_queries(tasks, NAMES * 3)  # 12 queries, 4 in flight
    with OneShapeServer(accepts, prompts_of(queries)) as server:
        backend = backend_for(server.url, concurrency=4)
        identity = backend.identity()
        assert backend.describe()["structured_output_used"] is None  # not known yet
        first = backend.answer(queries, DECODING)
        asked = len(server.requests)
        again = backend.answer(queries[:5], DECODING)  # a later batch
    check_answers(tasks, queries, first, accepts)
    check_answers(tasks, queries[:5], again, accepts)
    # only the first query looked for the shape: one rejected request per shape tried, then
    # every query asked once in the shape the server takes, and later batches go straight to it
    assert asked == len(tried) + len(queries)
    assert server.shapes() == tried + [accepts] * (len(queries) + 5)
    assert len(moves(caplog)) == len(tried)  # each move logged once, not per request
    for message, shape in zip(moves(caplog), tried, strict=True):
        assert f"as {shape} (HTTP" in message
    assert backend.describe()["structured_output_used"] == accepts
    assert backend.describe()["structured_output_setting"] == "auto"
    assert backend.identity() == identity  # the cache key part does not change mid-run


def test_requests_carry_the_schema_in_each_shape(tasks):
    queries = make_queries(tasks, NAMES)
    seen = {}
    for accepts in ("json_schema", "json_object", "ollama", "none"):
        with OneShapeServer(accepts, prompts_of(queries)) as server:
            backend_for(server.url, structured_output=accepts, concurrency=1).answer(
                queries, DECODING
            )
        seen[accepts] = server.requests
        assert server.shapes() == [accepts] * 4  # an explicit shape is asked directly
    for query, json_schema, json_object, ollama, none in zip(queries, *seen.values(), strict=True):
        fmt = json_schema["payload"]["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
        assert fmt["json_schema"]["name"] == f"gliomacompare_{query.prompt.task}"
        assert fmt["json_schema"]["schema"] == query.prompt.json_schema
        assert json_object["payload"]["response_format"] == {"type": "json_object"}
        assert ollama["path"] == "/api/chat" and ollama["payload"]["stream"] is False
        assert ollama["payload"]["format"] == query.prompt.json_schema
        assert ollama["payload"]["options"]["num_predict"] == 64
        assert ollama["payload"]["options"]["temperature"] == 0.0
        assert "response_format" not in none["payload"]
        for request in (json_schema, json_object, ollama, none):
            assert prompt_text(request["payload"]) == query.prompt.text
            np.testing.assert_array_equal(
                image_of(request["path"], request["payload"]), query.image
            )


def test_the_schema_does_not_change_what_counts_as_an_answer(tasks):
    # the polygon schema allows at most K vertices; a server that gives more anyway is read
    # back by the parser exactly as without a schema (kept whole, status repaired)
    queries = make_queries(tasks, ["polygon"])
    ring = [[round(20 + 10 * math.cos(a)), round(20 + 10 * math.sin(a))] for a in
            np.linspace(0, 2 * math.pi, 12, endpoint=False)]  # fmt: skip
    text = json.dumps({"points": ring})

    class TooMany(OneShapeServer):
        def respond(self, path, payload):
            choice = {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            return 200, {"choices": [choice]}

    with TooMany("json_schema", prompts_of(queries)) as server:
        answer = backend_for(server.url).answer(queries, DECODING)[0]
    assert server.shapes() == ["json_schema"]
    parsed = parse_answer(tasks["polygon"], answer.text, queries[0].prompt)
    assert parsed == parse_answer(tasks["polygon"], text, queries[0].prompt)
    assert parsed.status == "repaired" and len(parsed.value) == 12


def test_an_explicit_shape_does_not_fall_back(tasks, caplog):
    caplog.set_level(logging.WARNING, logger="GliomaCompareLib.vlm.openai_backend")
    queries = make_queries(tasks, ["grade", "box"])
    with OneShapeServer("json_object", prompts_of(queries)) as server:
        answers = backend_for(server.url, structured_output="json_schema").answer(queries, DECODING)
    assert server.shapes() == ["json_schema", "json_schema"]
    for answer in answers:
        assert answer.text is None and "HTTP 400" in answer.error
        assert answer.meta["structured_output"] == "json_schema"
    assert moves(caplog) == []


def test_a_400_that_does_not_name_the_field_is_an_answer_not_a_fallback(tasks):
    queries = make_queries(tasks, ["grade"])

    class Refusing(OneShapeServer):
        def respond(self, path, payload):
            return 400, {"error": {"message": "image is larger than 2048 pixels"}}

    with Refusing("json_schema", prompts_of(queries)) as server:
        answer = backend_for(server.url).answer(queries, DECODING)[0]
    assert server.shapes() == ["json_schema"]
    assert answer.text is None and "larger than 2048" in answer.error


def test_falling_back_is_not_a_retry(tasks):
    # one retry allowed; the json_object server fails its first accepted request once: the
    # rejected json_schema request must not have used up that retry
    queries = make_queries(tasks, ["point"])
    with OneShapeServer("json_object", prompts_of(queries), fail_first=True) as server:
        answer = backend_for(server.url, max_retries=1).answer(queries, DECODING)[0]
    assert answer.error is None and answer.meta["structured_output"] == "json_object"
    assert server.shapes() == ["json_schema", "json_object", "json_object"]


def test_ollama_requests_stay_on_the_configured_host_and_path(tasks):
    queries = make_queries(tasks, ["grade"])
    with OneShapeServer("ollama", prompts_of(queries)) as server:
        prefixed = server.url.removesuffix("/v1") + "/proxy/v1"
        backend = backend_for(prefixed, structured_output="ollama")
        answer = backend.answer(queries, DECODING)[0]
        port = server.httpd.server_address[1]
    # the prefix is kept and /v1 swapped for /api/chat: this server 404s that path (it serves
    # /api/chat at its root), and the backend reports it instead of trying elsewhere
    assert [r["path"] for r in server.requests] == ["/proxy/api/chat"]
    assert server.requests[0]["host"] == f"127.0.0.1:{port}"
    assert answer.text is None and "HTTP 404" in answer.error


def test_ollama_grade_probabilities_from_its_logprobs(tasks):
    tokens = ['{"', "grade", '":', ' "', "L", "GG", '"}']
    logprobs = [{"token": t, "logprob": -0.01, "top_logprobs": []} for t in tokens]
    logprobs[4]["top_logprobs"] = [
        {"token": "L", "logprob": math.log(0.6)},
        {"token": "H", "logprob": math.log(0.3)},
    ]
    queries = make_queries(tasks, ["grade"], score=True)
    with OneShapeServer("ollama", prompts_of(queries), logprobs=logprobs) as server:
        answer = backend_for(server.url, structured_output="ollama").answer(queries, DECODING)[0]
    payload = server.requests[0]["payload"]
    assert payload["logprobs"] is True and payload["top_logprobs"] == 10
    assert answer.p_options["LGG"] == pytest.approx(2 / 3)
    assert answer.generated_tokens == 9 and answer.finish_reason == "stop"


def test_the_setting_reaches_the_backend_from_the_cli_and_the_run_config(tasks):
    queries = make_queries(tasks, ["grade"])
    with OneShapeServer("ollama", prompts_of(queries)) as server:
        settings = BackendSettings(
            backend="openai", base_url=server.url, structured_output="ollama"
        )
        backend = settings.build(concurrency=1)
        assert backend.structured_output == "ollama"
        assert backend.identity()["structured_output"] == "ollama"
        backend.answer(queries, DECODING)
        assert server.shapes() == ["ollama"]
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, BackendSettings)
    args = parser.parse_args(["--backend", "openai", "--structured-output", "json_object"])
    assert dataclass_from_args(BackendSettings, args).structured_output == "json_object"
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        parser.parse_args(["--backend", "openai", "--structured-output", "xml"])
    with pytest.raises(ValueError, match="openai backend"):
        make_backend("tiny", structured_output="none")
    with pytest.raises(ValueError, match="structured_output 'xml'"):
        OpenAIBackend("http://127.0.0.1:1", model="m", structured_output="xml")
    assert BackendSettings.__dataclass_fields__["structured_output"].metadata["choices"] == (
        STRUCTURED_OUTPUTS
    )
    minimal = {"data": {"synthetic": {"cases": 4}}, "cnn": {"enabled": False}}
    config = parse_run_config({**minimal, "vlm": {"structured_output": "json_object"}})
    assert config.vlm.structured_output == "json_object"
    assert parse_run_config(minimal).vlm.structured_output is None
    with pytest.raises(ValueError, match=r"vlm\.structured_output"):
        parse_run_config({**minimal, "vlm": {"structured_output": "xml"}})


def test_a_server_that_stops_taking_the_schema_mid_run_is_logged_once(tasks, caplog):
    # the server is restarted without structured output while 4 requests are in flight, all
    # asked as json_schema: each is rejected and moves on, but the move is logged once
    caplog.set_level(logging.WARNING, logger="GliomaCompareLib.vlm.openai_backend")
    first = make_queries(tasks, ["grade"])
    later = make_queries(tasks, ["point", "box", "polygon", "grade"])
    barrier = threading.Barrier(4, timeout=10)

    class Restarted(OneShapeServer):
        def respond(self, path, payload):
            self.accepts = "none" if len(self.requests) > 1 else "json_schema"
            return super().respond(path, payload)

    with Restarted("json_schema", prompts_of(first + later)) as server:
        server.lock = contextlib.nullcontext()  # let the four rejections overlap

        rejected = Restarted.respond

        def respond(path, payload):
            status, body = rejected(server, path, payload)
            if request_shape(path, payload) == "json_schema" and status == 400:
                barrier.wait()  # all four were asked as json_schema before any moved on
            return status, body

        server.respond = respond
        backend = backend_for(server.url, concurrency=4)
        assert backend.answer(first, DECODING)[0].meta["structured_output"] == "json_schema"
        answers = backend.answer(later, DECODING)
    check_answers(tasks, later, answers, "none")
    assert server.shapes().count("json_schema") == 5
    assert [m.split(" as ")[1].split(" ")[0] for m in moves(caplog)] == [
        "json_schema",
        "json_object",
        "ollama",
    ]
