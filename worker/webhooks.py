"""The webhook dispatcher: a thread in each worker's main process that delivers the outbox
(:mod:`app.webhooks.outbox`) to the endpoints.

Every ``WEBHOOK_POLL_SECONDS`` it takes the pending messages that are due, ``FOR UPDATE SKIP LOCKED`` (so
several workers share the outbox without sending a message twice at once), and moves each one's
``next_attempt_at`` past the time an attempt may take (its claim: if this process dies mid-attempt,
another dispatcher retries the message once that time has passed). It commits, then POSTs each message,
signed (:mod:`app.webhooks.signing`), outside any transaction, and records the attempt in the delivery log
with the message's new state: delivered on a 2xx answer; else retried after ``WEBHOOK_RETRY_SECONDS``
doubled at every attempt (at most ``WEBHOOK_MAX_RETRY_SECONDS``), and given up (failed) after
``WEBHOOK_MAX_ATTEMPTS``.

It reads committed rows only: an event is never sent before the transaction that ended its run has
committed, and never sent for one that rolled back. Delivery is at least once: a receiver deduplicates
on the ``webhook-id`` header. Redirects are not followed (a 3xx is a failed attempt), and the answer's
body is never read.

Where it sends (server-side request forgery): a webhook's URL is a tenant's, the worker's network is the
service's. Unless ``WEBHOOK_ALLOW_PRIVATE`` (by default only with ENV=dev or test), each attempt resolves
the URL's host and refuses it when any of its addresses is not public (:func:`is_public_address`:
loopback, RFC 1918, link-local with the cloud metadata service, unique-local, unspecified, multicast,
reserved); otherwise it connects to the address it checked, not to a second lookup's (the ``Host`` header
and, for https, the TLS server name and certificate check keep the URL's host name), so a name that
resolves to a public address when checked and to a private one when connecting (DNS rebinding) gains
nothing. A refused attempt is a failed one, logged for the tenant in words that say nothing of the
service's network. What remains is the deployment's to close: public addresses that route inside it (its
own load balancer's, a NAT64 prefix other than the well-known one) and HTTP(S)_PROXY, which when set is
asked to reach the checked address.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib.metadata import version
from typing import Any

import httpx
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from app.config import Settings
from app.db import create_db_engine, create_session_factory, session_scope
from app.models import DeliveryOutcome, MessageStatus, utcnow
from app.webhooks import repository
from app.webhooks.schemas import WebhookEvent
from app.webhooks.signing import signed_headers

__all__ = [
    "REFUSED_ADDRESS",
    "Claim",
    "WebhookDispatcher",
    "event_body",
    "is_public_address",
    "resolve_host",
    "retry_delay",
    "start_webhook_dispatcher",
]

logger = logging.getLogger(__name__)

BATCH = 50  # messages taken per pass
SENDERS = 4  # deliveries in flight at once (a slow endpoint does not hold up the others' events)
CLAIM_MARGIN_SECONDS = 60.0  # beyond the timeout: how long a claimed message waits before another retries it
STOP_MARGIN_SECONDS = 5.0  # beyond the timeout: how long stop() lets the attempts in flight finish
# What the delivery log says of a host that does not resolve or resolves to an address that is not public:
# the same words for both, so that the log does not tell a tenant which names exist inside the network.
REFUSED_ADDRESS = (
    "the URL's host does not resolve to a public address; webhooks are only sent to public addresses"
)

Resolver = Callable[[str, int], list[str]]


class _RefusedAddress(Exception):
    """The host cannot be sent to: it did not resolve, or to an address that is not allowed."""


def resolve_host(host: str, port: int) -> list[str]:
    """The IP addresses of ``host`` for a TCP connection to ``port``, in the resolver's order, each once.
    OSError (socket.gaierror) when it does not resolve; UnicodeError for a name IDNA refuses."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public_address(address: str) -> bool:
    """Whether ``address`` (an IPv4 or IPv6 address) is a public unicast one: not loopback, private (RFC
    1918, 100.64.0.0/10, IPv6 unique-local), link-local (169.254.0.0/16 with the cloud metadata service,
    fe80::/10), unspecified, multicast, reserved or documentation; an IPv4 address inside IPv6
    (IPv4-mapped, 6to4, NAT64's well-known prefix) is judged as the IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # a scope id (fe80::1%eth0) says nothing here
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:  # fec0::/10, deprecated; not in Python 3.11's list of private networks
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class Claim:
    """A message taken for one attempt: everything needed to send it without the database."""

    message_id: str
    webhook_id: str
    attempt: int
    url: str
    secret: str
    body: bytes


@dataclass(frozen=True)
class _Target:
    """Where one attempt connects: the URL with its host replaced by each address that was checked (tried
    in the resolver's order while a connection is refused, as a plain connect would), and what keeps the
    host name (the ``Host`` header; for https the TLS server name)."""

    urls: list[httpx.URL]
    host_header: str
    extensions: dict[str, Any]


def retry_delay(attempt: int, settings: Settings) -> timedelta:
    """The wait after failed ``attempt`` (1-based): ``WEBHOOK_RETRY_SECONDS`` x 2^(attempt - 1), at most
    ``WEBHOOK_MAX_RETRY_SECONDS``."""
    seconds = settings.webhook_retry_seconds * 2 ** min(attempt - 1, 62)
    return timedelta(seconds=min(seconds, settings.webhook_max_retry_seconds))


def event_body(
    event_type: str, occurred_at: datetime, payload: dict[str, Any], public_url: str | None
) -> bytes:
    """The JSON body of an event (:class:`~app.webhooks.schemas.WebhookEvent`), its links made absolute
    with ``public_url`` when there is one."""
    data = dict(payload)
    if public_url and isinstance(data.get("links"), dict):
        base = public_url.rstrip("/")
        data["links"] = {name: f"{base}{path}" for name, path in data["links"].items()}
    return WebhookEvent(type=event_type, timestamp=occurred_at, data=data).model_dump_json().encode()


class WebhookDispatcher:
    """Delivers due webhook messages: :meth:`run_once` for one pass, :meth:`start` for the thread."""

    def __init__(
        self,
        settings: Settings,
        session_factory: Callable[[], Session],
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], datetime] = utcnow,
        resolve: Resolver = resolve_host,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.http = http or httpx.Client(
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
            headers={"User-Agent": f"bertpt-webhooks/{version('bertpt')}"},
        )
        self.clock = clock
        self.resolve = resolve
        self._senders = ThreadPoolExecutor(SENDERS, thread_name_prefix="bertpt-webhook")
        self._in_flight: set[Future[DeliveryOutcome]] = set()
        self._in_flight_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bertpt-webhooks", daemon=True)

    def claim_due(self) -> list[Claim]:
        """Take the messages that are due (at most :data:`BATCH`): attempt + 1, and the next attempt moved
        past this one's end; committed before anything is sent."""
        now = self.clock()
        claim_until = now + timedelta(seconds=self.settings.webhook_timeout_seconds + CLAIM_MARGIN_SECONDS)
        claims = []
        with session_scope(self.session_factory) as session:
            for message, webhook in repository.due_messages(session, now, limit=BATCH):
                message.attempts += 1
                message.next_attempt_at = claim_until
                body = event_body(
                    message.event_type, message.occurred_at, message.payload, self.settings.public_url
                )
                claims.append(
                    Claim(message.id, webhook.id, message.attempts, webhook.url, webhook.secret, body)
                )
        return claims

    def deliver(self, claim: Claim) -> DeliveryOutcome:
        """One signed POST of the claimed message, and its record: the delivery log's row and the
        message's new state (delivered, retried later, or given up)."""
        headers = signed_headers(claim.secret, claim.message_id, self.clock(), claim.body)
        headers["Content-Type"] = "application/json"
        status_code: int | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            target = self._target(claim)
            headers["Host"] = target.host_header
            for index, url in enumerate(target.urls, start=1):
                try:
                    with self.http.stream(
                        "POST", url, content=claim.body, headers=headers, extensions=target.extensions
                    ) as response:
                        status_code = response.status_code
                    break
                except httpx.ConnectError:  # refused or unreachable (not a timeout): the next address
                    if index == len(target.urls):
                        raise
        except _RefusedAddress:
            error = REFUSED_ADDRESS
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            # ValueError: what the URL pattern admits but httpx refuses: a failed attempt like any other,
            # not an error that keeps the message claimed, unlogged, retried for ever.
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration_ms = (time.perf_counter() - started) * 1000
        if status_code is not None and not 200 <= status_code < 300:
            error = f"the endpoint answered HTTP {status_code}; a 2xx is expected"
        outcome = DeliveryOutcome.SUCCEEDED if error is None else DeliveryOutcome.FAILED
        self._record(claim, outcome, status_code, error, duration_ms)
        return outcome

    def _target(self, claim: Claim) -> _Target:
        """Resolve the claim's host once and check every address it resolves to (see the module's
        docstring); those addresses are the ones connected to. _RefusedAddress when the host does not
        resolve or an address is not public (unless ``WEBHOOK_ALLOW_PRIVATE``)."""
        url = httpx.URL(claim.url)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = self.resolve(url.host, port)
        except (OSError, ValueError) as exc:  # gaierror; UnicodeError: a label IDNA refuses
            logger.info("webhook %s: %s does not resolve (%s)", claim.webhook_id, url.host, exc)
            raise _RefusedAddress from None
        refused = [a for a in addresses if not is_public_address(a)]
        if not addresses or (refused and not self.settings.webhooks_may_reach_private()):
            # The operator's log may name the addresses; the tenant's delivery log does not.
            logger.warning(
                "webhook %s: %s resolves to %s, not public: refused (WEBHOOK_ALLOW_PRIVATE)",
                claim.webhook_id,
                url.host,
                ", ".join(refused) or "nothing",
            )
            raise _RefusedAddress
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        urls = [url.copy_with(host=address) for address in addresses]
        return _Target(urls, url.netloc.decode("ascii"), extensions)

    def _record(
        self,
        claim: Claim,
        outcome: DeliveryOutcome,
        status_code: int | None,
        error: str | None,
        duration_ms: float,
    ) -> None:
        now = self.clock()
        next_attempt_at: datetime | None = None
        with session_scope(self.session_factory) as session:
            message = repository.message_for_update(session, claim.message_id)
            if message is None:  # its webhook was deleted meanwhile: nothing to record
                return
            # Unless another dispatcher took the message over (this attempt outlived its claim).
            if message.status == MessageStatus.PENDING and message.attempts == claim.attempt:
                if outcome == DeliveryOutcome.SUCCEEDED:
                    message.status, message.finished_at = MessageStatus.DELIVERED, now
                elif claim.attempt >= self.settings.webhook_max_attempts:
                    message.status, message.finished_at = MessageStatus.FAILED, now
                    logger.warning(
                        "webhook %s: message %s given up after %d attempts (%s)",
                        claim.webhook_id,
                        claim.message_id,
                        claim.attempt,
                        error,
                    )
                else:
                    next_attempt_at = now + retry_delay(claim.attempt, self.settings)
                message.next_attempt_at = next_attempt_at
            repository.add_delivery(
                session,
                webhook_id=claim.webhook_id,
                message_id=claim.message_id,
                attempt=claim.attempt,
                outcome=outcome,
                status_code=status_code,
                error=error,
                duration_ms=duration_ms,
                created_at=now,
                next_attempt_at=next_attempt_at,
            )

    def run_once(self) -> int:
        """One pass: claim what is due, deliver it (:data:`SENDERS` at a time); the number of attempts.
        Once :meth:`stop` is called, the claims not yet sent are left: their claims expire and they are
        sent again later (by this worker once it is back, or by another)."""
        claims = self.claim_due()
        futures = []
        for claim in claims:
            with self._in_flight_lock:
                if self._stop.is_set():
                    break
                future = self._senders.submit(self.deliver, claim)
                self._in_flight.add(future)
            future.add_done_callback(self._finished)
            futures.append(future)
        wait(futures)
        for future in futures:
            if not future.cancelled() and (exc := future.exception()) is not None:
                raise exc  # the database failed while the attempt was recorded: the loop logs it
        return len(claims)

    def _finished(self, future: Future[DeliveryOutcome]) -> None:
        with self._in_flight_lock:
            self._in_flight.discard(future)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once() == BATCH
            except Exception as exc:  # the database is unreachable: try again at the next pass
                logger.warning("webhooks: dispatch failed (%s: %s); next time again", type(exc).__name__, exc)
                busy = False
            if not busy:
                self._stop.wait(self.settings.webhook_poll_seconds)

    def start(self) -> WebhookDispatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the loop, drop the attempts not started, let those in flight finish and record themselves
        within ``timeout`` seconds in all (default: ``WEBHOOK_TIMEOUT_SECONDS`` plus
        :data:`STOP_MARGIN_SECONDS`), then close the connections. Attempts still running after that keep
        the HTTP client (they end with the process); their messages are sent again later."""
        if timeout is None:
            timeout = self.settings.webhook_timeout_seconds + STOP_MARGIN_SECONDS
        deadline = time.monotonic() + timeout
        with self._in_flight_lock:  # no submission after this
            self._stop.set()
            in_flight = set(self._in_flight)
        self._senders.shutdown(wait=False, cancel_futures=True)
        _, running = wait(in_flight, timeout=max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if running or self._thread.is_alive():
            logger.warning(
                "webhooks: %d attempts still running after %.0f s; left to end with the process",
                len(running),
                timeout,
            )
            return
        self._senders.shutdown(wait=True)  # its threads have nothing left to do
        self.http.close()


def start_webhook_dispatcher(settings: Settings) -> WebhookDispatcher:
    """Start the dispatcher of a worker process configured by ``settings``, with its own database engine
    (no pool: nothing kept open across the prefork pool's forks)."""
    engine = create_db_engine(settings.database_url, poolclass=NullPool)
    return WebhookDispatcher(settings, create_session_factory(engine)).start()
