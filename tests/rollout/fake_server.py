"""A tiny OpenAI-compatible server on 127.0.0.1 for tests: replies are made by a function of the request;
it can fail on purpose (429, 500, a dropped connection, a reply that never comes)."""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Fault = str | None
"""What to do with a request instead of answering: "429", "500", "503", "drop" (close the connection without
a reply), "hang" (never reply), or None (answer)."""


def random_faults(rate: float, seed: int = 0, kinds: tuple[str, ...] = ("429", "500", "drop")
                  ) -> Callable[[dict[str, Any]], Fault]:
    """A fault for a share ``rate`` of requests, drawn from ``kinds``, reproducibly."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def fault(body: dict[str, Any]) -> Fault:
        with lock:
            return rng.choice(kinds) if rng.random() < rate else None

    return fault


class FakeServer:
    """Serves ``POST /v1/completions`` and ``/v1/chat/completions``; records every request body."""

    def __init__(self, reply: Callable[[dict[str, Any]], str], finish_reason: str = "stop", fail_first: int = 0,
                 logprobs: list[float] | None = None, fault: Callable[[dict[str, Any]], Fault] | None = None,
                 delay: float = 0.0, reasoning: Callable[[dict[str, Any]], str | None] | None = None):
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail_first = fail_first
        self.answered = 0
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
                action = fault(body) if fault else None
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if action == "hang":
                    time.sleep(3600)
                    return
                if action:
                    retry = {"Retry-After": "0"} if action == "429" else {}
                    self._send(int(action), {"error": f"fault {action}"}, retry)
                    return
                if delay:
                    time.sleep(delay)
                text = reply(body)
                if self.path.endswith("/chat/completions"):
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}}
                    thought = reasoning(body) if reasoning else None
                    if thought:
                        choice["message"]["reasoning_content"] = thought
                elif self.path.endswith("/completions"):
                    choice = {"index": 0, "text": text}
                else:
                    self._send(404, {"error": f"no route {self.path}"})
                    return
                choice["finish_reason"] = finish_reason
                if logprobs is not None and body.get("logprobs"):
                    choice["logprobs"] = ({"content": [{"token": "t", "logprob": v} for v in logprobs]}
                                          if "message" in choice else {"token_logprobs": logprobs})
                server.answered += 1
                self._send(200, {"choices": [choice], "usage": {"completion_tokens": len(text.split())}})

            def _send(self, code: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
