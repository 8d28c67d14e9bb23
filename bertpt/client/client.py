""":class:`Client`: the connection to a bertpt API (its URL, its key, one httpx connection pool) and the
resources built on it (``client.corpora``, ``client.runs``...).

Every call goes through :meth:`Client.request` (or its streamed twin :meth:`Client.request_stream`): an
answer with status 400 or more, or no answer at all, raises :class:`~bertpt.client.errors.ApiError`;
nothing else does. Synchronous, so it works the same in a script, a notebook cell and a thread.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol, TypeVar

import httpx

from app.pagination import MAX_LIMIT
from bertpt.client.config import ClientConfig
from bertpt.client.errors import ApiError, connection_error, error_from_response, is_transient
from bertpt.client.resources import (
    CheckpointsResource,
    CorporaResource,
    DatasetsResource,
    EvaluationsResource,
    ModelsResource,
)
from bertpt.client.runs import RunsResource
from bertpt.client.webhooks import WebhooksResource

__all__ = ["Client", "Retries"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True)
class Retries:
    """How the client rides out a dropped connection while it follows a stream or downloads a file:
    ``attempts`` reconnections in a row that bring nothing new (the count starts again whenever one does),
    waiting ``backoff_seconds``, doubled each time, at most ``max_backoff_seconds``, before each."""

    attempts: int = 5
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 8.0

    def wait(self, failures: int) -> None:
        """Sleep before reconnection number ``failures`` (1 for the first)."""
        delay = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** max(failures - 1, 0))
        if delay > 0:
            time.sleep(delay)

    def call(self, send: Callable[[], T], what: str) -> T:
        """``send()`` (one request), sent again after a transient ApiError (no answer, or 502, 503, 504:
        :func:`~bertpt.client.errors.is_transient`) up to ``attempts`` times, with the backoff; the last
        error is raised. ``what`` names the request in the warning logged before each new try."""
        failures = 0
        while True:
            try:
                return send()
            except ApiError as exc:
                if not is_transient(exc) or failures >= self.attempts:
                    raise
                failures += 1
                logger.warning("%s failed (%s); trying again (%d/%d)", what, exc, failures, self.attempts)
                self.wait(failures)


class Page(Protocol[T_co]):
    """A page of a list: ``{data, next_cursor}`` (``app.pagination``)."""

    @property
    def data(self) -> Sequence[T_co]: ...

    @property
    def next_cursor(self) -> str | None: ...


def _user_agent() -> str:
    try:
        return f"bertpt-client/{version('bertpt')}"
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        return "bertpt-client"


class Client:
    """A client of the bertpt API at ``api_url`` (``http://host:port``) with the key ``api_key``.

    Either left None is taken from :meth:`ClientConfig.load` (``BERTPT_API_URL`` / ``BERTPT_API_KEY``, else
    the file ``bertpt login`` wrote). ``timeout``: seconds to connect, and to wait for each read of an
    answer (a live stream's keep-alives come every 15 s). ``transport``: an httpx transport to send
    through instead of the network (tests; a mounted app). ``retries``: how streams and downloads
    reconnect (:class:`Retries`).

    Use it as a context manager, or call :meth:`close`, to release its connections::

        with Client() as client:
            run = client.runs.get("run_...")
    """

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        retries: Retries | None = None,
    ) -> None:
        if api_url is None or api_key is None:
            config = ClientConfig.load()
            api_url = api_url if api_url is not None else config.api_url
            api_key = api_key if api_key is not None else config.api_key
        self.api_url = api_url.rstrip("/")
        self.retries = retries or Retries()
        headers = {"User-Agent": _user_agent()}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.api_url, headers=headers, timeout=timeout, transport=transport
        )

        self.corpora = CorporaResource(self)
        self.checkpoints = CheckpointsResource(self)
        self.models = ModelsResource(self)
        self.runs = RunsResource(self)
        self.datasets = DatasetsResource(self)
        self.evaluations = EvaluationsResource(self)
        self.webhooks = WebhooksResource(self)

    def __repr__(self) -> str:
        return f"Client(api_url={self.api_url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections (it cannot be used afterwards)."""
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send ``method path`` (``path`` from the API's root: ``/v1/runs``); ``kwargs`` are httpx's
        (``params``, ``json``, ``headers``, ``files``...). Returns the answer, its body read. Raises
        ApiError for a status of 400 or more (the API's type, message and param) and when no answer came
        (status_code 0, naming the URL)."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise connection_error(exc, self._url(path)) from None
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    @contextlib.contextmanager
    def request_stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """:meth:`request` whose answer's body is read as it arrives (``response.iter_bytes()``): for live
        streams and downloads. Raises ApiError as :meth:`request` does, before the body is read; a
        connection lost while it is read raises ApiError (status_code 0, type ``connection_lost``) out of
        the ``with`` block."""
        url = self._url(path)
        answered = False
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                answered = True
                yield response
        except httpx.TransportError as exc:
            if not answered:
                raise connection_error(exc, url) from None
            reason = str(exc) or type(exc).__name__
            raise ApiError(0, "connection_lost", f"the connection to {url} was lost: {reason}") from None

    def all_pages(
        self, path: str, parse: Callable[[Any], Page[T_co]], params: dict[str, Any] | None = None
    ) -> list[T_co]:
        """Every item of a paginated list: the pages followed by their ``next_cursor`` until the last one
        (each as large as the API serves). ``parse`` turns a page's JSON into its model."""
        items: list[T_co] = []
        after = ""
        while True:
            page = parse(
                self.request(
                    "GET", path, params={**(params or {}), "limit": MAX_LIMIT, "after": after}
                ).json()
            )
            items.extend(page.data)
            if not page.next_cursor:
                return items
            after = page.next_cursor

    def _url(self, path: str) -> httpx.URL:
        """The URL a request for ``path`` goes to (merged with the API's URL as httpx does: a path prefix
        of ``api_url`` kept), without its query string."""
        return self._http.build_request("GET", path).url.copy_with(query=None)
