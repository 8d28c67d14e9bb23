"""Webhooks end to end, with a real ``bertpt worker`` (its dispatcher thread) and a receiver started by the
test: a real tiny run's ``run.succeeded`` arrives signed, its summary and links right; a receiver that is
down when a run ends gets the event once it comes back (retried with a short backoff set through the
settings), every attempt in the delivery log."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from bertpt.client import verify_webhook
from tests.e2e.conftest import Poll, Worker
from tests.support import TINY_HYPERPARAMETERS
from tests.webhook_receiver import Receiver

PUBLIC_URL = "https://bertpt.example.com"
# Retried every half second or so while the receiver is down (not given up meanwhile).
FAST_RETRIES = {
    "webhook_poll_seconds": 0.2,
    "webhook_retry_seconds": 0.3,
    "webhook_max_retry_seconds": 1.0,
    "webhook_max_attempts": 100,
    "webhook_allow_private": True,  # the receiver is on 127.0.0.1
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


def _create_webhook(
    client: TestClient, headers: dict[str, str], url: str, events: list[str]
) -> dict[str, Any]:
    response = client.post("/v1/webhooks", json={"url": url, "events": events}, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _deliveries(client: TestClient, headers: dict[str, str], webhook_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.text
    deliveries: list[dict[str, Any]] = response.json()["data"]
    return deliveries[::-1]  # oldest first


@pytest.mark.timeout(240)
def test_a_real_runs_success_arrives_signed_with_its_summary(
    settings: Settings,
    start_worker: Callable[..., Worker],
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    poll: Poll,
    receiver: Receiver,
) -> None:
    settings = settings.model_copy(update={"public_url": PUBLIC_URL, **FAST_RETRIES})
    start_worker(settings)
    receiver.start()
    with TestClient(create_app(settings)) as client:
        webhook = _create_webhook(client, headers, receiver.url, ["run.succeeded", "run.failed"])
        run_id = submit_run(client, headers, TINY_HYPERPARAMETERS)
        run = wait_for_run(client, headers, run_id)
        assert run["status"] == "succeeded", run

        [received] = receiver.wait_for(1, seconds=60)
        event = verify_webhook(received.body, received.headers, webhook["secret"])
        assert event["type"] == "run.succeeded"
        data = event["data"]
        assert (data["id"], data["status"], data["name"]) == (run_id, "succeeded", "e2e")
        assert data["step"] == data["total_steps"] == TINY_HYPERPARAMETERS["max_steps"]
        assert data["final"] == run["latest"] and data["baseline"] == run["baseline"]
        assert data["baseline"]["eval"]["masked_lm_loss"] > 0 and data["error"] is None
        assert data["links"]["model"] == f"{PUBLIC_URL}/v1/runs/{run_id}/model"
        for link in data["links"].values():  # each link is the API's
            assert client.get(link.removeprefix(PUBLIC_URL), headers=headers).status_code == 200

        deliveries = poll(lambda: _deliveries(client, headers, webhook["id"]), "the delivery logged")
        assert [(d["attempt"], d["outcome"], d["status_code"]) for d in deliveries] == [(1, "succeeded", 204)]
        assert deliveries[0]["event_id"] == received.headers["webhook-id"]
    assert len(receiver.received) == 1  # once


@pytest.mark.timeout(180)
def test_a_receiver_that_is_down_gets_the_event_after_it_comes_back(
    settings: Settings,
    start_worker: Callable[..., Worker],
    headers: dict[str, str],
    submit_run: Callable[..., str],
    poll: Poll,
    receiver: Receiver,
) -> None:
    """A run cancelled while queued (its task goes to a queue no worker reads: nothing trains) ends with
    the receiver down; the worker's dispatcher retries until the receiver is up, then delivers it."""
    start_worker(settings.model_copy(update=FAST_RETRIES))
    unread_queue = settings.model_copy(update={"training_queue": f"unread-{secrets.token_hex(4)}"})
    with TestClient(create_app(unread_queue)) as client:
        webhook = _create_webhook(client, headers, receiver.url, ["run.*"])
        run_id = submit_run(client, headers, TINY_HYPERPARAMETERS)
        response = client.post(f"/v1/runs/{run_id}/cancel", headers=headers)
        assert response.json()["status"] == "cancelled", response.text

        failed = poll(
            lambda: [d for d in _deliveries(client, headers, webhook["id"]) if d["attempt"] >= 2],
            "two attempts refused",
            seconds=60,
        )
        assert all(d["outcome"] == "failed" and d["status_code"] is None for d in failed)
        assert receiver.received == []

        receiver.start()
        [received] = receiver.wait_for(1, seconds=60)
        event = verify_webhook(received.body, received.headers, webhook["secret"])
        assert (event["type"], event["data"]["id"], event["data"]["status"]) == (
            "run.cancelled",
            run_id,
            "cancelled",
        )

        deliveries = poll(
            lambda: (
                (log := _deliveries(client, headers, webhook["id"]))[-1]["outcome"] == "succeeded" and log
            ),
            "the delivery logged",
            seconds=30,
        )
        assert [d["attempt"] for d in deliveries] == list(range(1, len(deliveries) + 1))
        assert {d["event_id"] for d in deliveries} == {received.headers["webhook-id"]}  # one event, retried
        assert [d["outcome"] for d in deliveries[:-1]] == ["failed"] * (len(deliveries) - 1)
        assert (
            all(d["next_attempt_at"] for d in deliveries[:-1]) and deliveries[-1]["next_attempt_at"] is None
        )
