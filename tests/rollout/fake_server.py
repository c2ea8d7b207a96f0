"""A tiny OpenAI-compatible server on 127.0.0.1 for tests: replies are made by a function of the request."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class FakeServer:
    """Serves ``POST /v1/completions`` and ``/v1/chat/completions``; records every request body."""

    def __init__(self, reply: Callable[[dict[str, Any]], str], finish_reason: str = "stop", fail_first: int = 0,
                 logprobs: list[float] | None = None):
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail_first = fail_first
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                if server.fail_first > 0:
                    server.fail_first -= 1
                    self._send(503, {"error": "busy"})
                    return
                text = reply(body)
                if self.path.endswith("/chat/completions"):
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}}
                elif self.path.endswith("/completions"):
                    choice = {"index": 0, "text": text}
                else:
                    self._send(404, {"error": f"no route {self.path}"})
                    return
                choice["finish_reason"] = finish_reason
                if logprobs is not None and body.get("logprobs"):
                    choice["logprobs"] = ({"content": [{"token": "t", "logprob": v} for v in logprobs]}
                                          if "message" in choice else {"token_logprobs": logprobs})
                self._send(200, {"choices": [choice], "usage": {"completion_tokens": len(text.split())}})

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
