"""The webhook dispatcher against a receiver started by the test: a run's end arrives signed (verified
with the client's helper), links made absolute; nothing is sent before the commit; a receiver that is
down gets the event once it is back (retried with backoff, every attempt in the delivery log); one that
keeps failing is given up after the last attempt; a deleted webhook gets nothing more. Unless
WEBHOOK_ALLOW_PRIVATE, an address that is not public is refused, whatever else the name resolves to, and
the address checked is the one connected to. Stopping lets an attempt in flight finish before the
connections close.

Time is the dispatcher's clock, moved by the test: no test waits for a backoff."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy import delete, select

from app.config import Settings
from app.db import session_scope
from app.ids import new_id
from app.models import MessageStatus, Webhook, WebhookDelivery, WebhookMessage, utcnow
from app.runs import lifecycle
from app.runs.states import RunStatus, Trigger
from app.webhooks.signing import new_secret
from bertpt.client.webhooks import WebhookVerificationError, verify_webhook
from tests.support import Factory
from tests.webhook_receiver import Receiver
from worker.webhooks import (
    REFUSED_ADDRESS,
    WebhookDispatcher,
    event_body,
    is_public_address,
    resolve_host,
    retry_delay,
)


class Clock:
    """The time plus what the test has moved it by; ``frozen`` stops it (to compare times exactly)."""

    def __init__(self) -> None:
        self.offset = timedelta()
        self.frozen: datetime | None = None

    def __call__(self) -> datetime:
        return self.frozen or utcnow() + self.offset

    def freeze(self) -> datetime:
        self.frozen = self()
        return self.frozen

    def advance(self, delta: timedelta) -> None:
        self.offset += delta
        if self.frozen is not None:
            self.frozen += delta


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        webhook_timeout_seconds=5,
        webhook_max_attempts=3,
        webhook_retry_seconds=2,
        webhook_max_retry_seconds=3,
        webhook_allow_private=True,  # the receiver is on 127.0.0.1
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dispatcher(settings: Settings, factory: Factory, clock: Clock) -> Iterator[WebhookDispatcher]:
    dispatcher = WebhookDispatcher(settings, factory.session_factory, clock=clock)
    yield dispatcher
    dispatcher.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


def _webhook(factory: Factory, url: str, events: list[str] | None = None) -> Webhook:
    with session_scope(factory.session_factory) as session:
        webhook = Webhook(
            id=new_id("wh"),
            tenant_id=factory.tenant_id,
            url=url,
            events=events or ["run.*"],
            secret=new_secret(),
        )
        session.add(webhook)
    return webhook


def _succeeded_run(factory: Factory, *, commit: bool = True) -> str:
    run_id = factory.run(
        corpus_id=factory.corpus(b"a b c.\nd e f.\n"),
        base_model="minilm-l6-h384-uncased",
        status=RunStatus.RUNNING,
        attempt=1,
    )
    with session_scope(factory.session_factory) as session:
        assert lifecycle.finish_run(
            session, run_id, 1, Trigger.SUCCEED, progress={"step": 5, "total_steps": 5}
        )
    return run_id


def _message(factory: Factory, webhook_id: str) -> WebhookMessage:
    with factory.session_factory() as session:
        return session.scalars(select(WebhookMessage).where(WebhookMessage.webhook_id == webhook_id)).one()


def _deliveries(factory: Factory, webhook_id: str) -> list[WebhookDelivery]:
    with factory.session_factory() as session:
        statement = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
        return list(session.scalars(statement.order_by(WebhookDelivery.id)))


def test_a_runs_end_arrives_signed_and_is_logged(
    factory: Factory, dispatcher: WebhookDispatcher, receiver: Receiver, settings: Settings
) -> None:
    receiver.start()
    webhook = _webhook(factory, receiver.url)
    run_id = _succeeded_run(factory)

    assert dispatcher.run_once() == 1
    [received] = receiver.wait_for(1, seconds=10)
    assert received.path == "/hooks/bertpt" and received.headers["Content-Type"] == "application/json"
    event = verify_webhook(received.body, received.headers, webhook.secret)
    assert event["type"] == "run.succeeded"
    assert (event["data"]["id"], event["data"]["status"], event["data"]["step"]) == (run_id, "succeeded", 5)
    message = _message(factory, webhook.id)
    assert received.headers["webhook-id"] == message.id
    assert (message.status, message.attempts, message.next_attempt_at) == (MessageStatus.DELIVERED, 1, None)
    [delivery] = _deliveries(factory, webhook.id)
    assert (delivery.attempt, delivery.outcome, delivery.status_code, delivery.error) == (
        1,
        "succeeded",
        204,
        None,
    )
    assert delivery.duration_ms > 0 and delivery.next_attempt_at is None

    assert dispatcher.run_once() == 0  # delivered once
    with pytest.raises(WebhookVerificationError):
        verify_webhook(received.body, received.headers, new_secret())  # another webhook's secret


def test_nothing_is_sent_before_the_commit(
    factory: Factory, dispatcher: WebhookDispatcher, receiver: Receiver
) -> None:
    receiver.start()
    webhook = _webhook(factory, receiver.url)
    run_id = factory.run(
        corpus_id=factory.corpus(b"a b c.\n"),
        base_model="minilm-l6-h384-uncased",
        status=RunStatus.RUNNING,
        attempt=1,
    )
    with session_scope(factory.session_factory) as session:
        assert lifecycle.finish_run(session, run_id, 1, Trigger.SUCCEED)
        session.flush()
        assert dispatcher.run_once() == 0  # the message exists in this open transaction only
    assert dispatcher.run_once() == 1  # committed: sent
    assert len(receiver.wait_for(1, seconds=10)) == 1 and _message(factory, webhook.id).status == "delivered"


def test_a_receiver_that_is_down_gets_the_event_once_it_is_back(
    factory: Factory, dispatcher: WebhookDispatcher, receiver: Receiver, clock: Clock, settings: Settings
) -> None:
    webhook = _webhook(factory, receiver.url)  # its port is held, nothing listens yet: refused
    _succeeded_run(factory)

    now = clock.freeze()
    assert dispatcher.run_once() == 1  # refused
    message = _message(factory, webhook.id)
    assert (message.status, message.attempts) == (MessageStatus.PENDING, 1)
    assert message.next_attempt_at == now + retry_delay(1, settings)
    [failed] = _deliveries(factory, webhook.id)
    assert failed.outcome == "failed" and failed.status_code is None and "Connect" in (failed.error or "")
    assert failed.next_attempt_at == message.next_attempt_at
    assert dispatcher.run_once() == 0  # not due before its backoff

    receiver.start()
    clock.advance(retry_delay(1, settings))
    assert dispatcher.run_once() == 1
    [received] = receiver.wait_for(1, seconds=10)
    assert verify_webhook(received.body, received.headers, webhook.secret)["type"] == "run.succeeded"
    assert received.headers["webhook-id"] == message.id  # the same event, retried
    assert [(d.attempt, d.outcome) for d in _deliveries(factory, webhook.id)] == [
        (1, "failed"),
        (2, "succeeded"),
    ]
    assert _message(factory, webhook.id).status == MessageStatus.DELIVERED


def test_an_endpoint_that_keeps_failing_is_given_up_after_the_last_attempt(
    factory: Factory, dispatcher: WebhookDispatcher, receiver: Receiver, clock: Clock, settings: Settings
) -> None:
    receiver.status = 500
    receiver.start()
    webhook = _webhook(factory, receiver.url)
    _succeeded_run(factory)
    for attempt in range(1, settings.webhook_max_attempts + 1):
        assert dispatcher.run_once() == 1
        clock.advance(retry_delay(attempt, settings))
    assert dispatcher.run_once() == 0
    message = _message(factory, webhook.id)
    assert (message.status, message.attempts, message.next_attempt_at) == (MessageStatus.FAILED, 3, None)
    deliveries = _deliveries(factory, webhook.id)
    assert [(d.attempt, d.status_code) for d in deliveries] == [(1, 500), (2, 500), (3, 500)]
    assert "HTTP 500" in (deliveries[0].error or "")
    assert deliveries[-1].next_attempt_at is None and deliveries[0].next_attempt_at is not None
    assert len(receiver.received) == 3


def test_an_address_that_cannot_be_sent_to_is_a_failed_attempt_in_the_log(
    factory: Factory, dispatcher: WebhookDispatcher, clock: Clock, settings: Settings
) -> None:
    """A host name IDNA refuses (a label of 64 characters, which the API refuses now, in a row written
    before): each attempt fails and is logged, and the event is given up after the last one (not retried
    unlogged for ever)."""
    webhook = _webhook(factory, f"http://{'a' * 64}.invalid/hooks")
    _succeeded_run(factory)
    for attempt in range(1, settings.webhook_max_attempts + 1):
        assert dispatcher.run_once() == 1
        clock.advance(retry_delay(attempt, settings))
    message = _message(factory, webhook.id)
    assert (message.status, message.attempts) == (MessageStatus.FAILED, settings.webhook_max_attempts)
    deliveries = _deliveries(factory, webhook.id)
    assert [d.outcome for d in deliveries] == ["failed"] * settings.webhook_max_attempts
    assert all(d.status_code is None and d.error == REFUSED_ADDRESS for d in deliveries)


def test_retries_back_off_exponentially_up_to_the_cap() -> None:
    settings = Settings(webhook_retry_seconds=30, webhook_max_retry_seconds=3600)
    delays = [retry_delay(attempt, settings).total_seconds() for attempt in range(1, 10)]
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_a_deleted_webhooks_pending_event_is_not_sent(
    factory: Factory, dispatcher: WebhookDispatcher, receiver: Receiver
) -> None:
    receiver.start()
    webhook = _webhook(factory, receiver.url)
    _succeeded_run(factory)
    with session_scope(factory.session_factory) as session:
        session.execute(delete(Webhook).where(Webhook.id == webhook.id))
    assert dispatcher.run_once() == 0 and receiver.received == []


def test_links_are_made_absolute_with_the_public_url() -> None:
    payload = {"id": "run_x", "links": {"run": "/v1/runs/run_x"}}
    occurred = utcnow()
    relative = json.loads(event_body("run.failed", occurred, payload, None))
    absolute = json.loads(event_body("run.failed", occurred, payload, "https://bertpt.example.com/"))
    assert relative["data"]["links"] == {"run": "/v1/runs/run_x"}
    assert absolute["data"]["links"] == {"run": "https://bertpt.example.com/v1/runs/run_x"}
    assert absolute["type"] == "run.failed" and payload["links"] == {"run": "/v1/runs/run_x"}


# -- where the workers may send ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",  # the cloud metadata service
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fd00::1",  # unique-local
        "fe80::1",
        "fe80::1%2",
        "fec0::1",  # site-local
        "ff02::1",
        "::ffff:10.0.0.1",  # IPv4-mapped
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    ],
)
def test_addresses_that_are_not_public(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert is_public_address(address)


def test_the_default_refuses_private_addresses_outside_dev_and_test() -> None:
    prod = {"env": "prod", "database_url": "postgresql+psycopg://db/bertpt", "cors_origins": ["https://a"]}
    assert not Settings(**prod).webhooks_may_reach_private()  # type: ignore[arg-type]
    assert Settings(**prod, webhook_allow_private=True).webhooks_may_reach_private()  # type: ignore[arg-type]
    assert Settings(env="dev").webhooks_may_reach_private()
    assert Settings(env="test").webhooks_may_reach_private()
    assert not Settings(env="test", webhook_allow_private=False).webhooks_may_reach_private()


def test_resolve_host_gives_each_address_once() -> None:
    assert resolve_host("127.0.0.1", 80) == ["127.0.0.1"]
    assert "127.0.0.1" in resolve_host("localhost", 80)


@pytest.fixture
def strict(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_private": False})


@pytest.mark.parametrize(
    ("host", "addresses"),
    [
        ("127.0.0.1", None),  # the receiver itself, by its address
        ("localhost", None),  # by a name that resolves to loopback
        ("hooks.example.com", ["93.184.215.14", "127.0.0.1"]),  # one public address is not enough
        ("metadata.example.com", ["169.254.169.254"]),
    ],
)
def test_an_address_that_is_not_public_is_refused_and_logged_in_general_words(
    factory: Factory,
    strict: Settings,
    clock: Clock,
    receiver: Receiver,
    host: str,
    addresses: list[str] | None,
) -> None:
    """WEBHOOK_ALLOW_PRIVATE false: nothing is sent, and the tenant's delivery log names no address."""
    receiver.start()

    def resolve(name: str, port: int) -> list[str]:
        return addresses if addresses is not None else resolve_host(name, port)

    dispatcher = WebhookDispatcher(strict, factory.session_factory, clock=clock, resolve=resolve)
    try:
        webhook = _webhook(factory, receiver.url.replace("127.0.0.1", host))
        _succeeded_run(factory)
        assert dispatcher.run_once() == 1
    finally:
        dispatcher.stop()
    assert receiver.received == []
    [delivery] = _deliveries(factory, webhook.id)
    assert (delivery.outcome, delivery.status_code, delivery.error) == ("failed", None, REFUSED_ADDRESS)
    assert delivery.next_attempt_at is not None  # a failed attempt like any other: retried
    assert "127.0.0.1" not in REFUSED_ADDRESS and "169.254" not in REFUSED_ADDRESS


def test_the_address_checked_is_the_one_connected_to(
    factory: Factory, dispatcher: WebhookDispatcher, settings: Settings, clock: Clock, receiver: Receiver
) -> None:
    """The name is resolved once (a second lookup could answer otherwise: DNS rebinding); the request goes
    to the addresses it gave, in order while one refuses, with the URL's host in its Host header."""
    receiver.start()
    lookups: list[str] = []

    def resolve(name: str, port: int) -> list[str]:
        lookups.append(name)
        return ["::1", "127.0.0.1"]  # nothing listens on ::1: refused, the next address is tried

    pinned = WebhookDispatcher(settings, factory.session_factory, clock=clock, resolve=resolve)
    try:
        webhook = _webhook(factory, f"http://hooks.bertpt.invalid:{receiver.port}/hooks/bertpt")
        _succeeded_run(factory)
        assert pinned.run_once() == 1
    finally:
        pinned.stop()
    [received] = receiver.wait_for(1, seconds=10)
    assert received.headers["Host"] == f"hooks.bertpt.invalid:{receiver.port}"
    assert lookups == ["hooks.bertpt.invalid"]
    assert [d.outcome for d in _deliveries(factory, webhook.id)] == ["succeeded"]


def test_https_keeps_the_host_name_for_tls(factory: Factory, settings: Settings, clock: Clock) -> None:
    """An https URL connects to the checked address, the TLS server name (what the certificate is checked
    against) the URL's host; the default port kept out of the Host header."""
    sent: list[httpx.Request] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    http = httpx.Client(transport=httpx.MockTransport(endpoint))
    dispatcher = WebhookDispatcher(
        settings, factory.session_factory, http=http, clock=clock, resolve=lambda *_: ["93.184.215.14"]
    )
    try:
        _webhook(factory, "https://hooks.example.com/bertpt?x=1")
        _succeeded_run(factory)
        assert dispatcher.run_once() == 1
    finally:
        dispatcher.stop()
    [request] = sent
    assert str(request.url) == "https://93.184.215.14/bertpt?x=1"
    assert request.headers["Host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"


# -- stopping --------------------------------------------------------------------------------------------


def test_stopping_lets_an_attempt_in_flight_finish_before_closing(
    factory: Factory, settings: Settings, clock: Clock, receiver: Receiver
) -> None:
    receiver.hold()
    receiver.start()
    webhook = _webhook(factory, receiver.url)
    _succeeded_run(factory)
    dispatcher = WebhookDispatcher(settings, factory.session_factory, clock=clock).start()
    receiver.wait_for(1, seconds=10)  # the attempt is in flight, its answer held

    stopping = threading.Thread(target=dispatcher.stop, args=(30.0,))
    stopping.start()
    assert not dispatcher.http.is_closed
    receiver.release()
    stopping.join(30)
    assert not stopping.is_alive() and dispatcher.http.is_closed
    assert [d.outcome for d in _deliveries(factory, webhook.id)] == ["succeeded"]


def test_an_attempt_that_outlasts_the_stop_keeps_its_connection(
    factory: Factory, settings: Settings, clock: Clock, receiver: Receiver
) -> None:
    """Past the stop's bound the client is not closed under the attempt: it ends and is recorded."""
    receiver.hold()
    receiver.start()
    webhook = _webhook(factory, receiver.url)
    _succeeded_run(factory)
    dispatcher = WebhookDispatcher(settings, factory.session_factory, clock=clock).start()
    receiver.wait_for(1, seconds=10)

    dispatcher.stop(timeout=0.2)  # returns with the attempt still running
    assert not dispatcher.http.is_closed
    receiver.release()
    deadline = time.monotonic() + 10
    while not (deliveries := _deliveries(factory, webhook.id)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [(d.outcome, d.status_code) for d in deliveries] == [("succeeded", 204)]
    dispatcher.stop()  # now idle: closes
    assert dispatcher.http.is_closed
