"""A real HTTP server on 127.0.0.1 for the tests of the ``openai`` backend and of the Slicer
module's VLM runs: a free port, served from a daemon thread, opened and closed as a context
manager. Each test server builds its own request handler and passes it to :meth:`serve`."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer:
    """Base of the tests' servers; ``url_path`` is appended to the server's address in
    :attr:`url` (``/v1`` for an OpenAI-compatible server, empty for a raw one)."""

    url_path = "/v1"

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{self.url_path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
