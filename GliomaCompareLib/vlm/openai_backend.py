"""The ``openai`` backend: any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, Ollama...).

- Images go as ``data:image/png;base64,...`` URLs in an ``image_url`` content part, before the
  prompt text.
- Structured output (``structured_output``): the answer is constrained by the JSON schema of the
  task's answer definition (:meth:`~GliomaCompareLib.vlm.tasks.TaskSpec.json_schema`), in one of
  the request shapes servers accept (:data:`STRUCTURED_OUTPUTS`):

  - ``json_schema``: ``response_format = {"type": "json_schema", "json_schema": {"name",
    "schema", "strict": true}}`` (OpenAI; vLLM, which turns it into its ``structured_outputs``;
    llama.cpp's server, which reads ``json_schema.schema``; Ollama's ``/v1``, which turns it into
    its ``format``);
  - ``json_object``: ``response_format = {"type": "json_object"}`` (valid JSON, no schema);
  - ``ollama``: Ollama's native ``POST /api/chat`` on the same host, ``format`` = the schema;
  - ``none``: no constraint; ``auto`` (default) tries them in that order.

  vLLM's own ``guided_json`` / ``structured_outputs`` fields are not sent: vLLM takes
  ``response_format`` in every version, and it ignores request fields it does not know (the
  ``guided_*`` fields since v0.12), so a wrong guess would pass unconstrained without an error.
  With ``auto``, an HTTP 400/422 whose text names the shape's field (``response_format``,
  ``json_schema``, ``format`` ...; a 404/405/501 for ``/api/chat``) moves to the next shape; the
  first shape a server accepts is kept for every later request (the move is logged once), and
  each answer records the shape it was asked with (``meta["structured_output"]``). Moving on is
  not a retry (each shape has its own retries) and never changes the host. The schema only
  constrains the server: every answer still goes through the same parser.
  A 400/422 that names ``logprobs`` drops ``logprobs`` the same way (``meta["dropped_features"]``).
- Grade probabilities: ``logprobs`` with ``top_logprobs`` are requested; P(option) comes from the
  top log-probabilities of the token where the label starts in the generated answer (after
  ``"grade": "``), summing the alternatives that begin each option
  (``option_method="first_token_top_logprobs"``). Options missing from the top list get no
  mass; when neither appears, no probability is recorded.
- ``timeout_s`` bounds each request as a whole (connecting, headers and every read of the
  body, not each read alone); a reply larger than ``max_response_bytes`` is an error. Retries with exponential backoff (``backoff_s * 2**attempt``, capped,
  honouring ``Retry-After``) on connection errors, timeouts, HTTP 429 and 5xx. Other HTTP errors
  are not retried. A query that fails for good becomes an ``Answer`` with ``error`` set.
- Bounded concurrency: at most ``concurrency`` requests in flight (threads).
- The API key is read only from an environment variable (``GLIOMACOMPARE_API_KEY``, else
  ``OPENAI_API_KEY``); it is sent as a bearer token and never written to logs, errors, outputs
  or cache keys.
- Patient images leave the machine only on request: a base URL whose host is not loopback
  (``localhost``, ``127.0.0.0/8``, ``::1``) is refused unless ``allow_remote`` is set. Requests
  to a loopback server never go through an HTTP proxy (``http_proxy`` and the like are ignored);
  redirects are never followed (a redirect is an error that says so), so every request goes to
  the checked host. ``*.localhost`` names (resolved by the system resolver, which may send them
  anywhere) and user names or passwords in the URL are refused. Error texts that quote a reply
  have the key removed.

Only the standard library is used for HTTP (``urllib``).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from GliomaCompareLib.vlm.types import Answer, DecodingConfig, Query, png_bytes

__all__ = [
    "API_KEY_ENV",
    "STRUCTURED_OUTPUTS",
    "OpenAIBackend",
    "RemoteURLRefused",
    "is_loopback_url",
]

log = logging.getLogger(__name__)

#: Environment variables the API key is read from, in order.
API_KEY_ENV: tuple[str, ...] = ("GLIOMACOMPARE_API_KEY", "OPENAI_API_KEY")
#: How answers are constrained (see module docstring); ``auto`` tries the others in order.
STRUCTURED_OUTPUTS: tuple[str, ...] = ("auto", "json_schema", "json_object", "ollama", "none")
_AUTO_ORDER: tuple[str, ...] = STRUCTURED_OUTPUTS[1:]
#: Words in a 400/422 reply that say the server does not take a shape's field.
_SHAPE_WORDS: dict[str, re.Pattern] = {
    "json_schema": re.compile(r"response_format|json_schema|schema|structured|guided"),
    "json_object": re.compile(r"response_format|json_object|json mode"),
    "ollama": re.compile(r"(?<!message )\bformat\b"),
    "none": re.compile(r"(?!)"),
}
_LOGPROB_WORDS = re.compile(r"logprob")
#: Default bound on one reply's size (bytes).
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_ERROR_BODY_BYTES = 64 * 1024
_CHUNK = 64 * 1024


class RemoteURLRefused(ValueError):
    """A non-loopback server URL without the explicit opt-in."""


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is this machine (``localhost``, 127.0.0.0/8, ``::1``); no DNS."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_base_url(base_url: str, allow_remote: bool) -> urllib.parse.SplitResult:
    """Refuse URLs the backend must not send images to; returns the parsed URL."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Base URL {base_url!r}: expected http(s)://host[:port][/v1]")
    if "@" in parts.netloc:
        # the password would end up in logs and error texts: name only the host
        raise ValueError(
            f"Base URL for host {parts.hostname}: a user name or password in the URL is not "
            f"accepted; pass the key in {API_KEY_ENV[0]}"
        )
    host = parts.hostname.lower()
    if host != "localhost" and (host.endswith(".localhost") or host.startswith("localhost.")):
        raise ValueError(
            f"Base URL host {host}: names under localhost are resolved by the system resolver, "
            "which may point them at another machine; use localhost or 127.0.0.1"
        )
    if not is_loopback_url(base_url) and not allow_remote:
        raise RemoteURLRefused(
            f"Base URL {base_url} is not on this machine: the MRI slices of patients would "
            "be sent to it. Pass --allow-remote (allow_remote=True) if that is permitted"
        )
    return parts


class _HTTPFailure(Exception):
    def __init__(
        self,
        message: str,
        retryable: bool,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.body = body
        self.retry_after = retry_after


class OpenAIBackend:
    """An OpenAI-compatible chat-completions server as a VLM backend (see module docstring).

    Args:
        base_url: ``http://host:port`` or ``http://host:port/v1``.
        model: the server's model name; None asks ``/v1/models`` and takes the only model.
        allow_remote: allow a non-loopback host (images leave the machine).
        concurrency: most requests in flight.
        timeout_s: seconds per request as a whole (connect, headers, body).
        max_retries: retries after the first attempt.
        backoff_s: first backoff; doubles each retry (with up to 10% jitter).
        max_backoff_s: backoff cap.
        use_response_format: False is ``structured_output="none"`` (kept for callers).
        structured_output: one of :data:`STRUCTURED_OUTPUTS` (see module docstring).
        top_logprobs: alternatives requested per token for grade answers (0: no logprobs).
        model_label: what reports call the model (default: the model name).
        api_key: the key itself (tests); default from :data:`API_KEY_ENV`.
        sleep: the sleep function (tests may pass a fake clock).
        max_response_bytes: the largest reply accepted.

    Raises:
        RemoteURLRefused: a non-loopback URL without ``allow_remote``.
        ValueError: a URL that is not http(s), carries a user name or password, names a host
            under ``.localhost``; an unknown ``structured_output``; or a server with several
            models and no ``model``.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        allow_remote: bool = False,
        concurrency: int = 4,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        use_response_format: bool = True,
        top_logprobs: int = 10,
        model_label: str | None = None,
        api_key: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        structured_output: str = "auto",
    ):
        parts = _check_base_url(base_url, allow_remote)
        if structured_output not in STRUCTURED_OUTPUTS:
            raise ValueError(
                f"structured_output {structured_output!r}: use {', '.join(STRUCTURED_OUTPUTS)}"
            )
        if not use_response_format and structured_output == "auto":
            structured_output = "none"
        self.structured_output = structured_output
        self.allow_remote = bool(allow_remote)
        self.max_response_bytes = int(max_response_bytes)
        if not is_loopback_url(base_url) and parts.scheme == "http":
            log.warning("Sending patient images to %s over unencrypted http", parts.hostname)
        root = base_url.rstrip("/")
        self.base_url = root if root.endswith("/v1") else root + "/v1"
        self.concurrency = max(1, int(concurrency))
        self.timeout_s = float(timeout_s)
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.top_logprobs = int(top_logprobs)
        self._sleep = sleep
        self._api_key = api_key if api_key is not None else _key_from_env()
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()  # one request at a time finds the shape (auto)
        self.dropped: set[str] = set()
        # the shape asked with now, and whether the server has accepted it
        self._shape = _AUTO_ORDER[0] if structured_output == "auto" else structured_output
        self._confirmed = structured_output != "auto"
        self.model = model or self._only_model()
        self.model_label = model_label or self.model

    # ------------------------------------------------------------------ protocol
    def identity(self) -> dict:
        """Backend, server URL (no credentials), model name and the structured-output setting
        (as configured, not as found, so that it stays the same through a run)."""
        parts = urllib.parse.urlsplit(self.base_url)
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        out = {
            "backend": self.name,
            "base_url": f"{parts.scheme}://{netloc}{parts.path}",
            "model_id": self.model,
            "model_label": self.model_label,
            "response_format": self.structured_output != "none",
        }
        if self.structured_output in ("json_object", "ollama"):
            out["structured_output"] = self.structured_output  # asks differently
        return out

    def describe(self) -> dict:
        """:meth:`identity` plus what the server turned out to take."""
        with self._lock:
            used = self._shape if self._confirmed else None
            dropped = sorted(self.dropped)
        return {
            **self.identity(),
            "structured_output_setting": self.structured_output,
            "structured_output_used": used,
            "dropped_features": dropped,
        }

    def answer(self, queries: Sequence[Query], decoding: DecodingConfig) -> list[Answer]:
        """Answer a batch with at most ``concurrency`` requests in flight, in order."""
        if not queries:
            return []
        if len(queries) == 1 or self.concurrency == 1:
            return [self._one(q, decoding) for q in queries]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(queries))) as pool:
            return list(pool.map(lambda q: self._one(q, decoding), queries))

    # ------------------------------------------------------------------ requests
    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _request(
        self, method: str, path: str, payload: dict | None = None, root: str | None = None
    ) -> dict:
        """One HTTP exchange within ``timeout_s`` in all (to ``root`` + ``path``, ``root``
        defaulting to the base URL); raises :class:`_HTTPFailure`."""
        url = (root or self.base_url) + path
        # every request is checked, not only the base URL given to the constructor
        _check_base_url(url, self.allow_remote)
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(url, data=data, headers=self._headers(), method=method)
        watchdog = _Watchdog(self.timeout_s)
        try:
            body = self._exchange(_opener(watchdog, proxies=not is_loopback_url(url)), request)
        except (_HTTPFailure, OSError, http.client.HTTPException) as exc:
            if watchdog.expired:
                raise _HTTPFailure(f"timeout after {self.timeout_s:g} s from {url}", True) from None
            if isinstance(exc, _HTTPFailure):
                exc.args = (self._redact(str(exc)),)
                raise
            raise _HTTPFailure(self._redact(f"connection to {url} failed: {exc}"), True) from None
        finally:
            watchdog.cancel()
        if watchdog.expired:
            raise _HTTPFailure(f"timeout after {self.timeout_s:g} s from {url}", True)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _HTTPFailure(
                self._redact(f"{url} returned non-JSON: {body[:200]!r}"), False
            ) from None

    def _exchange(self, opener: urllib.request.OpenerDirector, request) -> bytes:
        url = request.full_url
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                return _read_bounded(response, self.max_response_bytes, url)
        except urllib.error.HTTPError as exc:
            raw = _read_bounded(exc, _ERROR_BODY_BYTES, url, truncate=True)
            text = self._redact(raw.decode("utf-8", "replace"))[:500]
            retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            retryable = exc.code == 429 or exc.code >= 500
            raise _HTTPFailure(
                f"HTTP {exc.code} from {url}: {text.strip() or exc.reason}",
                retryable,
                exc.code,
                text,
                retry_after,
            ) from None
        except TimeoutError as exc:
            raise _HTTPFailure(f"timeout after {self.timeout_s:g} s from {url}", True) from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError | socket.timeout):
                message = f"timeout after {self.timeout_s:g} s from {url}"
            else:
                message = f"cannot reach {url}: {reason}"
            raise _HTTPFailure(self._redact(message), True) from None

    def _with_retries(
        self, method: str, path: str, payload: dict | None = None, root: str | None = None
    ) -> dict:
        attempt = 0
        while True:
            try:
                return self._request(method, path, payload, root)
            except _HTTPFailure as exc:
                if not exc.retryable or attempt >= self.max_retries:
                    if attempt:
                        raise _HTTPFailure(
                            f"{exc} (after {attempt + 1} attempts)", False, exc.status, exc.body
                        ) from None
                    raise
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                delay *= 1 + 0.1 * random.random()
                if exc.retry_after is not None:
                    delay = min(max(delay, exc.retry_after), self.max_backoff_s)
                log.info("retrying in %.2f s: %s", delay, exc)
                self._sleep(delay)
                attempt += 1

    def _only_model(self) -> str:
        try:
            listing = self._with_retries("GET", "/models")
        except _HTTPFailure as exc:
            raise ValueError(
                f"No --model given, and listing the server's models failed: {exc}"
            ) from None
        names = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)]
        names = [n for n in names if n]
        if len(names) != 1:
            raise ValueError(
                f"No --model given and {self.base_url}/models lists "
                f"{len(names)} models ({', '.join(names[:10])}); pass --model NAME"
            )
        return names[0]

    def _payload(
        self, query: Query, decoding: DecodingConfig, shape: str, dropped: set[str]
    ) -> dict:
        """The ``/chat/completions`` request body, constrained in ``shape``."""
        image = base64.b64encode(png_bytes(query.image)).decode("ascii")
        if shape == "ollama":
            return self._ollama_payload(query, decoding, image, dropped)
        payload: dict = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{image}"},
                        },
                        {"type": "text", "text": query.prompt.text},
                    ],
                }
            ],
            "max_tokens": decoding.max_new_tokens,
            "temperature": decoding.temperature if decoding.do_sample else 0.0,
            "top_p": decoding.top_p if decoding.do_sample else 1.0,
            "seed": int(query.seed) % (2**31),
            "n": 1,
        }
        if shape == "json_schema":
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": query.prompt.response_name,
                    "schema": query.prompt.json_schema,
                    "strict": True,
                },
            }
        elif shape == "json_object":
            payload["response_format"] = {"type": "json_object"}
        if self._wants_logprobs(query, dropped):
            payload["logprobs"] = True
            payload["top_logprobs"] = self.top_logprobs
        return payload

    def _ollama_payload(
        self, query: Query, decoding: DecodingConfig, image: str, dropped: set[str]
    ) -> dict:
        """Ollama's native ``/api/chat`` body: images beside the text, ``format`` = schema."""
        payload: dict = {
            "model": self.model,
            "messages": [{"role": "user", "content": query.prompt.text, "images": [image]}],
            "stream": False,
            "format": query.prompt.json_schema,
            "options": {
                "num_predict": decoding.max_new_tokens,
                "temperature": decoding.temperature if decoding.do_sample else 0.0,
                "top_p": decoding.top_p if decoding.do_sample else 1.0,
                "seed": int(query.seed) % (2**31),
            },
        }
        if self._wants_logprobs(query, dropped):
            payload["logprobs"] = True
            payload["top_logprobs"] = self.top_logprobs
        return payload

    def _wants_logprobs(self, query: Query, dropped: set[str]) -> bool:
        return query.score_options and self.top_logprobs > 0 and "logprobs" not in dropped

    def _endpoint(self, shape: str) -> tuple[str, str | None]:
        """(path, root) of the chat request: Ollama's ``/api/chat`` sits beside ``/v1`` on the
        same host (the base URL without its ``/v1``)."""
        if shape == "ollama":
            return "/api/chat", self.base_url.removesuffix("/v1")
        return "/chat/completions", None

    def _one(self, query: Query, decoding: DecodingConfig) -> Answer:
        if not self._confirmed:
            with self._probe_lock:  # the others wait until the shape is known
                if not self._confirmed:
                    return self._ask(query, decoding)
        return self._ask(query, decoding)

    def _ask(self, query: Query, decoding: DecodingConfig) -> Answer:
        start = time.perf_counter()
        with self._lock:
            shape, dropped = self._shape, set(self.dropped)
        while True:
            payload = self._payload(query, decoding, shape, dropped)
            path, root = self._endpoint(shape)
            try:
                reply = self._with_retries("POST", path, payload, root)
                break
            except _HTTPFailure as exc:
                if "logprobs" in payload and _says(exc, _LOGPROB_WORDS):
                    dropped.add("logprobs")  # the server does not take logprobs: ask without
                    self._note_dropped("logprobs", exc)
                    continue
                following = self._next_shape(shape, exc)
                if following is None:
                    return Answer(
                        None,
                        error=self._redact(str(exc)),
                        latency_s=time.perf_counter() - start,
                        meta=_provenance(shape, dropped),
                    )
                self._move_on(shape, following, exc)
                shape = following
        with self._lock:
            if shape == self._shape:
                self._confirmed = True
        if shape == "ollama":
            reply = _from_ollama(reply)
        return self._to_answer(query, reply, shape, dropped, time.perf_counter() - start)

    def _next_shape(self, shape: str, exc: _HTTPFailure) -> str | None:
        """The shape to ask with after ``exc`` (``auto`` only, when it says the server does
        not take ``shape``); None: ``exc`` is the answer."""
        if self.structured_output != "auto" or shape == _AUTO_ORDER[-1]:
            return None
        absent = shape == "ollama" and exc.status in (404, 405, 501)
        if not absent and not _says(exc, _SHAPE_WORDS[shape]):
            return None
        return _AUTO_ORDER[_AUTO_ORDER.index(shape) + 1]

    def _move_on(self, shape: str, following: str, exc: _HTTPFailure) -> None:
        """Remember that the server does not take ``shape`` (logged once per server)."""
        with self._lock:
            if _AUTO_ORDER.index(self._shape) >= _AUTO_ORDER.index(following):
                return
            self._shape = following
        log.warning(
            "%s does not take structured output as %s (HTTP %s: %s); asking with %s from now on",
            self.base_url,
            shape,
            exc.status,
            self._redact(exc.body.strip() or str(exc))[:200],
            following,
        )

    def _note_dropped(self, feature: str, exc: _HTTPFailure) -> None:
        with self._lock:
            if feature in self.dropped:
                return
            self.dropped.add(feature)
        log.warning(
            "%s rejected %s (HTTP %s); sending requests without it from now on",
            self.base_url,
            feature,
            exc.status,
        )

    def _to_answer(
        self, query: Query, reply: dict, shape: str, dropped: set[str], latency: float
    ) -> Answer:
        try:
            choice = reply["choices"][0]
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError):
            return Answer(
                None,
                error=self._redact(f"malformed reply from {self.base_url}: {str(reply)[:200]}"),
                latency_s=latency,
                meta=_provenance(shape, dropped),
            )
        content = message.get("content")
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        refusal = message.get("refusal")
        text = content if content else (refusal or content)
        if isinstance(text, str):
            text = self._redact(text)
        options = None
        if query.score_options and query.prompt.options and isinstance(text, str):
            options = _first_token_option_logprobs(
                choice.get("logprobs"), text, query.prompt.answer_prefix, query.prompt.options
            )
        usage = reply.get("usage") or {}
        return Answer(
            text=text,
            refused=bool(refusal),
            finish_reason=choice.get("finish_reason"),
            option_logprobs=options,
            option_method="first_token_top_logprobs" if options else None,
            latency_s=latency,
            generated_tokens=usage.get("completion_tokens"),
            meta=_provenance(shape, dropped),
        )


class _RedirectRefused(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: the request carries patient images and the API key."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        fp.close()
        target = urllib.parse.urlsplit(newurl)
        where = f"{target.scheme}://{target.hostname or ''}" + (
            f":{target.port}" if target.port else ""
        )
        raise _HTTPFailure(
            f"HTTP {code} from {req.full_url} redirects to {where}{target.path}; redirects are "
            "not followed (the request carries patient images and the API key): point "
            "--base-url at the server itself",
            False,
            code,
        )


class _Watchdog:
    """Shuts the request's sockets down when its total time is up (a deadline across reads)."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked on it


class _TrackedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self._watchdog = watchdog

    def http_open(self, req):
        return self.do_open(_tracked(http.client.HTTPConnection, self._watchdog), req)


class _TrackedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self._watchdog = watchdog

    def https_open(self, req):
        return self.do_open(
            _tracked(http.client.HTTPSConnection, self._watchdog), req, context=self._context
        )


def _tracked(connection_class, watchdog: _Watchdog):
    def factory(*args, **kwargs):
        connection = connection_class(*args, **kwargs)
        connect = connection.connect

        def tracked_connect():
            # the socket itself: http.client drops conn.sock while the reply is still read
            connect()
            watchdog.track(connection.sock)

        connection.connect = tracked_connect
        return connection

    return factory


def _opener(watchdog: _Watchdog, *, proxies: bool) -> urllib.request.OpenerDirector:
    """An opener that follows no redirect; ``proxies=False`` ignores ``http_proxy`` & co."""
    handlers: list = [
        _RedirectRefused(),
        _TrackedHTTPHandler(watchdog),
        _TrackedHTTPSHandler(watchdog),
    ]
    if not proxies:
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def _read_bounded(response, limit: int, url: str, *, truncate: bool = False) -> bytes:
    """Read at most ``limit`` bytes, one socket read at a time; more is an error (or cut)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read1(_CHUNK) if hasattr(response, "read1") else response.read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if truncate:
                return b"".join(chunks)[:limit]
            raise _HTTPFailure(f"reply from {url} is larger than {limit} bytes; refused", False)


def _says(exc: _HTTPFailure, words: re.Pattern) -> bool:
    """Whether ``exc`` is a 400/422 whose text matches ``words`` (a field the server does not
    take); other errors are answers, not hints."""
    if exc.status not in (400, 422):
        return False
    return bool(words.search((exc.body or str(exc)).lower()))


def _provenance(shape: str, dropped: set[str]) -> dict:
    """What an answer records about how it was asked."""
    meta: dict = {"structured_output": shape}
    if dropped:
        meta["dropped_features"] = sorted(dropped)
    return meta


def _from_ollama(reply: dict) -> dict:
    """An Ollama ``/api/chat`` reply in the ``/chat/completions`` form (unchanged when it does
    not look like one, so that it is reported as malformed)."""
    if not isinstance(reply, dict) or not isinstance(reply.get("message"), dict):
        return reply
    choice: dict = {"message": reply["message"], "finish_reason": reply.get("done_reason")}
    if isinstance(reply.get("logprobs"), list):
        choice["logprobs"] = {"content": reply["logprobs"]}
    return {"choices": [choice], "usage": {"completion_tokens": reply.get("eval_count")}}


def _key_from_env() -> str | None:
    for name in API_KEY_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _first_token_option_logprobs(
    logprobs: dict | None, text: str, prefix: str, options: Sequence[str]
) -> dict[str, float] | None:
    """Option log-probabilities from the top alternatives of the token where the label starts.

    ``prefix`` is the JSON before the label (``{"grade": "``); whitespace differences around
    the colon are allowed. Returns None when the label position or both options are missing.
    """
    if not logprobs or not isinstance(logprobs.get("content"), list):
        return None
    key = re.escape(prefix.strip().lstrip("{").rstrip('"').rstrip().rstrip(":").strip())
    match = re.search(key + r'\s*:\s*"', text)
    if not match:
        return None
    label_start = match.end()
    position = 0
    for item in logprobs["content"]:
        token = item.get("token", "")
        end = position + len(token)
        if position <= label_start < end:
            offset = label_start - position
            mass = dict.fromkeys(options, 0.0)
            alternatives = item.get("top_logprobs") or [
                {"token": token, "logprob": item.get("logprob")}
            ]
            for alt in alternatives:
                piece = str(alt.get("token", ""))[offset:]
                lp = alt.get("logprob")
                if not piece or lp is None:
                    continue
                for option in options:
                    if option.startswith(piece) or piece.startswith(option):
                        mass[option] += math.exp(float(lp))
            # an option absent from the top alternatives is left out (probability ~0)
            found = {o: math.log(m) for o, m in mass.items() if m > 0}
            return found or None
        position = end
    return None
