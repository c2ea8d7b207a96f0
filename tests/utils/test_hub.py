"""Whether the hub can be reached, and the hub's libraries held offline."""

import http.server
import socket
import threading

import datasets.config
from huggingface_hub import constants

from aha.utils.hub import hub_reachable, offline_hub


def answering(status: int) -> http.server.HTTPServer:
    """A local server answering every HEAD request with ``status``."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_hub_is_reachable_when_it_answers_unless_the_answer_serves_no_files(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # straight to the local ports below
    # a mirror whose root is not a page still serves files; a proxy asking for credentials, or one that cannot
    # reach the hub (502), or the hub down (503), does not: the caches are used at once
    for status, reachable in ((200, True), (404, True), (407, False), (502, False), (503, False)):
        server = answering(status)
        try:
            assert hub_reachable(f"http://127.0.0.1:{server.server_port}") is reachable, status
        finally:
            server.shutdown()
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # a port nobody listens on
    assert not hub_reachable(f"http://127.0.0.1:{refused.getsockname()[1]}")
    refused.close()


def test_offline_hub_holds_both_libraries_offline_and_restores_them():
    before = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    with offline_hub():
        assert constants.HF_HUB_OFFLINE is True and datasets.config.HF_HUB_OFFLINE is True
    assert (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == before
    try:
        with offline_hub():
            raise KeyError("a failure inside")
    except KeyError:
        pass
    assert (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == before
