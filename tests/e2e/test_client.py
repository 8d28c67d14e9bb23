"""The Python client (bertpt.client) against real processes, through a real TCP connection that a proxy
of the test cuts: ``bertpt serve`` and ``bertpt worker`` training a tiny BERT, the live stream cut twice
mid-run (every event once, none missing), the final model's download cut mid-file (resumed with Range,
its sha256 the server's), a damaged part found, and the API's errors as ApiError fields.

The in-process tests of the same modules (every cut position, every unsafe archive member...) are in
tests/bertpt/client/."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from bertpt.client import ApiError, Client, Retries
from tests.support import TINY_HYPERPARAMETERS

if TYPE_CHECKING:
    from tests.e2e.conftest import ApiServer, Poll

pytestmark = pytest.mark.slow  # trains a tiny BERT: `pytest -m "not slow"` skips it

FAST = Retries(attempts=5, backoff_seconds=0.05)


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of the API: connection number n (from 0) is closed, both ways,
    once ``cuts[n]`` bytes of the API's answers have passed on it (as a proxy's idle timeout or a
    network drop does); the connections after the listed ones pass untouched. ``requests[n]``: what the
    client sent on connection n."""

    def __init__(self, upstream_port: int, cuts: list[int]) -> None:
        self.upstream_port = upstream_port
        self.cuts = list(cuts)
        self.requests: list[bytearray] = []
        self.cut = 0  # connections cut so far
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                number = len(self.requests)
                self.requests.append(bytearray())
            limit = self.cuts[number] if number < len(self.cuts) else None
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(
                target=self._forward_requests, args=(downstream, upstream, number), daemon=True
            ).start()
            threading.Thread(
                target=self._forward_answers, args=(upstream, downstream, limit), daemon=True
            ).start()

    def _forward_requests(self, downstream: socket.socket, upstream: socket.socket, number: int) -> None:
        try:
            while data := downstream.recv(65536):
                self.requests[number] += data
                upstream.sendall(data)
        except OSError:
            pass
        _close(upstream, downstream)

    def _forward_answers(self, upstream: socket.socket, downstream: socket.socket, limit: int | None) -> None:
        passed = 0
        try:
            while data := upstream.recv(65536):
                if limit is not None and passed + len(data) >= limit:
                    downstream.sendall(data[: limit - passed])
                    with self._lock:
                        self.cut += 1
                    break
                passed += len(data)
                downstream.sendall(data)
        except OSError:
            pass
        _close(upstream, downstream)

    def header_values(self, name: str) -> list[str | None]:
        """The value of header ``name`` in the first request of each connection (None: absent)."""
        values: list[str | None] = []
        for raw in self.requests:
            head = bytes(raw).split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
            found = [
                line.split(":", 1)[1].strip() for line in head if line.lower().startswith(f"{name.lower()}:")
            ]
            values.append(found[0] if found else None)
        return values


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@pytest.fixture
def proxies() -> Iterator[Callable[[int, list[int]], CuttingProxy]]:
    made: list[CuttingProxy] = []

    def make(port: int, cuts: list[int]) -> CuttingProxy:
        made.append(CuttingProxy(port, cuts))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


@pytest.mark.timeout(300)
def test_a_run_followed_and_downloaded_through_connections_that_drop(
    start_api: Callable[..., ApiServer],
    start_worker: Callable[..., object],
    submit_run: Callable[..., str],
    headers: dict[str, str],
    api_key: str,
    proxies: Callable[[int, list[int]], CuttingProxy],
    poll: Poll,
    tmp_path: Path,
) -> None:
    api = start_api()
    start_worker()
    with httpx.Client(base_url=api.base_url, timeout=30) as plain:
        run_id = submit_run(plain, headers, TINY_HYPERPARAMETERS)

    # Followed live through a proxy that cuts the first two connections a few events in.
    stream_proxy = proxies(api.port, [900, 900])
    with Client(stream_proxy.url, api_key, retries=FAST) as through_proxy:
        followed = list(through_proxy.runs.stream(run_id))
    assert stream_proxy.cut == 2 and len(stream_proxy.requests) >= 3
    assert followed[-1].event == "status" and followed[-1].data["status"] == "succeeded"
    ids = [event.id for event in followed]
    assert len(ids) == len(set(ids))
    # Every reconnection resumed after an event already yielded.
    resumed_after = stream_proxy.header_values("Last-Event-ID")
    assert resumed_after[0] is None and all(value in ids for value in resumed_after[1:3])

    with Client(api.base_url, api_key) as direct:
        # No gap: the same events as the whole stream replayed afterwards in one piece.
        assert list(direct.runs.stream(run_id)) == followed
        steps = [
            event.data["step"]
            for event in followed
            if event.event == "metric" and event.data["split"] == "train"
        ]
        assert steps == list(range(1, TINY_HYPERPARAMETERS["max_steps"] + 1))

        # The API's errors, as fields.
        with pytest.raises(ApiError) as info:
            direct.runs.get("run_missing")
        assert (info.value.status_code, info.value.type, info.value.param) == (404, "not_found", None)
        with pytest.raises(ApiError) as info:
            direct.runs.create({"base_model": "minilm-l6-h384-uncased", "corpus_id": "corp_x", "colour": 1})
        assert (info.value.status_code, info.value.type, info.value.param) == (
            422,
            "validation_error",
            "colour",
        )

        # One complete download computes the server's digest (kept from then on).
        first = direct.runs.download(run_id, tmp_path / "first", extract=False)
        url = f"/v1/runs/{run_id}/model"
        digest = poll(lambda: direct.request("HEAD", url).headers.get("x-content-sha256"), "the digest kept")
        assert digest == first.sha256
        size = first.archive.stat().st_size

    # The download cut mid-file (once in the middle of the answer's body), then resumed with a range.
    download_proxy = proxies(api.port, [size // 2])
    with Client(download_proxy.url, api_key, retries=FAST) as through_proxy:
        resumed = through_proxy.runs.download(run_id, tmp_path / "resumed")
    assert download_proxy.cut == 1
    assert resumed.verified and resumed.sha256 == digest
    assert resumed.archive.read_bytes() == first.archive.read_bytes()
    assert resumed.directory is not None and (resumed.directory / "config.json").is_file()
    ranges = [value for value in download_proxy.header_values("Range") if value]
    assert len(ranges) == 1 and 0 < int(ranges[0].removeprefix("bytes=").rstrip("-")) < size

    # Garbage where a part was left: found by its sha256, and the archive downloaded again whole.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    name = first.archive.name
    (damaged / f"{name}.part").write_bytes(os.urandom(size // 3))
    etag = httpx.head(f"{api.base_url}{url}", headers=headers).headers["etag"]
    (damaged / f"{name}.part.json").write_text(json.dumps({"etag": etag, "size": size}))
    with Client(api.base_url, api_key) as direct:
        again = direct.runs.download(run_id, damaged, extract=False)
    assert again.verified and again.archive.read_bytes() == first.archive.read_bytes()
