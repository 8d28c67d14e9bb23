"""Uploads: the file streamed from disk in pieces with a progress callback over every file of the upload,
and sent again after the API's 429 (all upload slots taken) once it says when."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from bertpt.client import Client
from tests.bertpt.client.conftest import NO_WAIT, InProcess
from tests.support import TenantKey, corpus_bytes, topic_dataset_tsv

CHUNK = 64 * 1024  # what httpx reads of a file at a time


def test_a_corpus_upload_reports_its_progress_piece_by_piece(api: Client, tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(corpus_bytes(documents=1500, sentences=4))  # about 380 KB
    size = path.stat().st_size
    calls: list[tuple[int, int]] = []
    corpus = api.corpora.upload(path, name="big", progress=lambda sent, total: calls.append((sent, total)))

    assert corpus.name == "big" and corpus.bytes == size and corpus.documents == 1500
    assert {total for _, total in calls} == {size}
    sent = [done for done, _ in calls]
    assert sent == sorted(sent) and sent[-1] == size
    # Read and sent a piece at a time, never the whole file at once.
    steps = [after - before for before, after in itertools.pairwise(sent)]
    assert len([step for step in steps if step > 0]) >= size // CHUNK and max(steps) <= CHUNK


def test_a_dataset_upload_counts_both_files(api: Client, tmp_path: Path, documents: list[list[str]]) -> None:
    train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    train.write_bytes(topic_dataset_tsv(documents))
    test.write_bytes(topic_dataset_tsv(documents[200:], per_label=8))
    calls: list[tuple[int, int]] = []
    dataset = api.datasets.upload(train, test_file=test, progress=lambda *call: calls.append(call))
    total = train.stat().st_size + test.stat().st_size
    assert dataset.has_test_file and dataset.test_filename == "test.tsv" and dataset.filename == "train.tsv"
    assert calls[-1] == (total, total)


class BusyOnce(httpx.BaseTransport):
    """A front that answers the first upload 429 (as the API does when its upload slots are all taken),
    then passes every request to the app."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and not self.refused:
            self.refused += 1
            request.read()
            body = {"error": {"type": "too_many_requests", "message": "busy", "param": None}}
            return httpx.Response(429, content=json.dumps(body), headers={"Retry-After": "0"})
        return self.inner.handle_request(request)


def test_an_upload_refused_with_429_is_sent_again(
    make_client: Callable[..., Client], client: TestClient, alice: TenantKey, tmp_path: Path
) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(corpus_bytes())
    busy = BusyOnce(InProcess(client))
    calls: list[tuple[int, int]] = []
    with make_client(alice.key, transport=busy, retries=NO_WAIT) as api:
        corpus = api.corpora.upload(path, progress=lambda *call: calls.append(call))
    assert busy.refused == 1 and corpus.bytes == path.stat().st_size
    size = path.stat().st_size
    assert calls.count((size, size)) == 2  # the file was read out twice, from its start each time
