"""A webhook endpoint for tests: an HTTP server on 127.0.0.1 in a thread that records every request it gets
(headers and body as received) and answers with the status the test sets."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """``Receiver().start()``; ``url``; ``received`` (in order); :meth:`wait_for` a number of requests
    (no sleeping: woken by each request, failing after a deadline); ``status``: the answer (default 204);
    :meth:`hold` keeps the answers back until :meth:`release`.

    Its port is bound when it is made, and held: until :meth:`start` nothing listens there, so a
    connection is refused (a receiver that is down), and no other process can take the port meanwhile."""

    def __init__(self, *, status: int = 204) -> None:
        self.status = status
        self.received: list[Received] = []
        self._arrived = threading.Condition()
        self._answer = threading.Event()
        self._answer.set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(), bind_and_activate=False)
        self._server.server_bind()  # bound, not listening: connections are refused until start()
        self.port = int(self._server.server_address[1])
        self._serving = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/bertpt"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                # Recorded before the answer: once the sender has its answer, the test sees the request.
                with receiver._arrived:
                    receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                    receiver._arrived.notify_all()
                assert receiver._answer.wait(60), "a held answer was never released"
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:  # quiet
                pass

        return Handler

    def start(self) -> Receiver:
        """Listen on the port and answer."""
        self._server.server_activate()
        self._serving = True
        threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="webhook-receiver", daemon=True
        ).start()
        return self

    def hold(self) -> None:
        """Keep the answers back (requests are still recorded as they arrive) until :meth:`release`."""
        self._answer.clear()

    def release(self) -> None:
        self._answer.set()

    def wait_for(self, count: int, *, seconds: float) -> list[Received]:
        """The first ``count`` requests, once they have arrived; AssertionError after ``seconds``."""
        with self._arrived:
            arrived = self._arrived.wait_for(lambda: len(self.received) >= count, timeout=seconds)
            assert arrived, f"{len(self.received)} of {count} webhook deliveries arrived in {seconds} s"
            return list(self.received[:count])

    def stop(self) -> None:
        """Stop answering and free the port (a receiver never started too)."""
        self.release()
        if self._serving:
            self._server.shutdown()
            self._serving = False
        self._server.server_close()
