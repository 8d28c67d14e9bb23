"""How many uploads one API process takes at once, and how it stops the ones in progress when it shuts down.

An upload holds a worker thread for as long as its client sends and the service checks what arrives
(minutes, for a large corpus). A process takes ``MAX_CONCURRENT_UPLOADS`` at once, fewer than its
``API_THREADS``; one more is answered 429 with ``Retry-After`` at once, before its body is read, so that
uploads never hold every thread and the other routes keep answering.

On SIGTERM uvicorn lets the requests in flight finish for ``SHUTDOWN_GRACE_SECONDS``, then cancels them;
a cancelled request does not stop its upload's thread. The app's lifespan then calls
:meth:`UploadSlots.stop`: each upload still running stops at its next chunk (a wait for the client's next
bytes is cut short), which removes its temporary file, and the process exits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import anyio
from fastapi.concurrency import run_in_threadpool

from app.errors import ServiceUnavailable, TooManyRequests

__all__ = ["RETRY_AFTER_SECONDS", "STOP_WAIT_SECONDS", "UploadSlots"]

P = ParamSpec("P")
T = TypeVar("T")

# What a refused client is told to wait: an upload takes seconds at least.
RETRY_AFTER_SECONDS = 5
# How long the shutdown waits for the uploads it stopped (each stops within one chunk's work).
STOP_WAIT_SECONDS = 5.0


class UploadSlots:
    """The upload slots of one API process (``slots`` of them) and the uploads' threads."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._lock = threading.Lock()
        self._held = 0
        self._threads = 0  # uploads running in a worker thread
        self._reads: set[anyio.CancelScope] = set()  # the waits for a client's next bytes
        self.stopping = False

    @property
    def held(self) -> int:
        return self._held

    @property
    def running(self) -> int:
        return self._threads

    def acquire(self) -> None:
        """Take a slot, or refuse the upload: 429 when they are all taken, 503 once shutting down."""
        with self._lock:
            if self.stopping:
                raise ServiceUnavailable("the server is shutting down; upload again in a moment")
            if self._held >= self.slots:
                raise TooManyRequests(
                    f"this server is already receiving {self.slots} upload(s), as many as it takes at "
                    f"once (MAX_CONCURRENT_UPLOADS); retry in {RETRY_AFTER_SECONDS} seconds",
                    retry_after=RETRY_AFTER_SECONDS,
                )
            self._held += 1

    def release(self) -> None:
        with self._lock:
            self._held -= 1

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(*args, **kwargs)`` (an upload service) in a worker thread, counted until it returns,
        even if the request is cancelled first."""

        def counted() -> T:
            with self._lock:
                self._threads += 1
            try:
                return function(*args, **kwargs)
            finally:
                with self._lock:
                    self._threads -= 1

        return await run_in_threadpool(counted)

    def check_running(self) -> None:
        """Called by an upload between chunks: ServiceUnavailable once the process is shutting down."""
        if self.stopping:
            raise ServiceUnavailable("the server is shutting down; the upload was stopped, send it again")

    @contextmanager
    def reading(self) -> Iterator[anyio.CancelScope]:
        """A wait for the client's next bytes (on the event loop), cut short by :meth:`stop`: its scope is
        then cancelled (``cancelled_caught``)."""
        with anyio.CancelScope() as scope:
            if self.stopping:
                scope.cancel()
            self._reads.add(scope)
            try:
                yield scope
            finally:
                self._reads.discard(scope)

    async def stop(self, timeout: float = STOP_WAIT_SECONDS) -> int:
        """Refuse new uploads, stop the running ones at their next chunk, and wait up to ``timeout`` for
        their threads to end. Returns how many are still running."""
        self.stopping = True
        for scope in list(self._reads):
            scope.cancel()
        with anyio.move_on_after(timeout):
            while self._threads:
                await anyio.sleep(0.02)
        return self._threads
