"""A real HTTP server on loopback that records webhook POSTs (body, headers) and answers as told."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.servers import free_port


class WebhookReceiver:
    """Records every POST; `status` is the HTTP status it answers; `delay_s` holds each answer."""

    def __init__(self, port: int | None = None, status: int = 200, delay_s: float = 0.0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.status = status
        self.delay_s = delay_s
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.delay_s:
                    threading.Event().wait(receiver.delay_s)
                with receiver.changed:
                    receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    receiver.changed.notify_all()
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def tasks(self) -> list[dict[str, Any]]:
        with self.changed:
            return [json.loads(body) for _, body in self.received]

    def wait_count(self, count: int, timeout: float) -> list[tuple[dict[str, str], bytes]]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.received) >= count, timeout):
                raise TimeoutError(f"{len(self.received)} webhook(s) received in {timeout}s, expected {count}")
            return list(self.received)
