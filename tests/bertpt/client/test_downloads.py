"""``client.runs.download``: a run's archive into a folder, resumed with Range/If-Range after a lost
connection or from a part an earlier call left, its sha256 checked against the server's (a damaged part
found and replaced), extracted safely (links, devices, absolute and ``..`` names refused). (A real TCP
connection cut between real processes: tests/e2e/test_client.py.)"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.models import Run
from app.runs.states import RunStatus
from app.storage import LocalStorage
from bertpt.client import ApiError, Client
from bertpt.client.downloads import EXTRACTED_MARKER, extract_archive
from tests.bertpt.client.conftest import NO_WAIT, CutBodies, InProcess, Recorder
from tests.support import TenantKey, add_checkpoint_row, fake_bert_files, make_run, write_directory

CREATED_AT = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
WEIGHTS = os.urandom(300_000)  # incompressible, like weights
FILES = {**fake_bert_files(), "model.safetensors": WEIGHTS}


@pytest.fixture
def trained(session: Session, alice: TenantKey, storage: LocalStorage) -> Run:
    """A succeeded run with its final model and a checkpoint at step 100 (with training state), as the
    worker stores them."""
    run = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED, output_storage_key=None)
    manifest = json.dumps({"created_at": CREATED_AT.isoformat(), "step": 100}).encode()
    write_directory(storage, f"runs/{run.id}/model", {**FILES, "bertpt_manifest.json": manifest})
    key = f"runs/{run.id}/checkpoints/checkpoint-100"
    state = {"optimizer.pt": b"optimizer", "scheduler.pt": b"scheduler"}
    write_directory(storage, key, {**FILES, **state, "bertpt_checkpoint.json": manifest})
    add_checkpoint_row(session, run, 100, key=key)
    return run


def reference(client: TestClient, alice: TenantKey, url: str) -> bytes:
    """The archive as a plain GET serves it (after which the server knows its digest)."""
    response = client.get(url, headers=alice.headers)
    assert response.status_code == 200
    return response.content


def left_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_the_model_downloaded_checked_and_extracted(api: Client, trained: Run, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    download = api.runs.download(trained.id, tmp_path / "out", progress=lambda *call: calls.append(call))
    root = f"{trained.id}-model"
    assert download.archive == tmp_path / "out" / f"{root}.tar"
    assert download.sha256 == hashlib.sha256(download.archive.read_bytes()).hexdigest()
    assert download.directory == tmp_path / "out" / root
    assert (download.directory / "model.safetensors").read_bytes() == WEIGHTS
    assert left_in(tmp_path / "out") == [root, f"{root}.tar"]  # no part, no state, no temporary folder
    assert calls[-1] == (download.archive.stat().st_size,) * 2
    # The first complete download computed the server's digest, which the client asked for afterwards.
    assert download.verified

    again = api.runs.download(trained.id, tmp_path / "out", extract=False)
    assert again.verified and again.sha256 == download.sha256 and again.directory is None
    assert (download.directory / "model.safetensors").read_bytes() == WEIGHTS  # the extraction stays


def test_a_checkpoint_with_its_training_state(api: Client, trained: Run, tmp_path: Path) -> None:
    download = api.runs.download(trained.id, tmp_path, step=100, include_optimizer=True)
    assert download.archive.name == f"{trained.id}-checkpoint-100-with-training-state.tar"
    assert download.directory is not None
    assert (download.directory / "optimizer.pt").read_bytes() == b"optimizer"
    without = api.runs.download(trained.id, tmp_path, step=100)
    assert without.directory is not None and not (without.directory / "optimizer.pt").exists()


@pytest.fixture
def cut_client(client: TestClient, alice: TenantKey) -> Callable[[list[int]], tuple[Client, CutBodies]]:
    def make(cuts: list[int]) -> tuple[Client, CutBodies]:
        transport = CutBodies(InProcess(client), cuts, path_suffix="/model")
        return Client("http://testserver", alice.key, transport=transport, retries=NO_WAIT), transport

    return make


def test_a_connection_lost_mid_file_is_resumed_with_a_range(
    cut_client: Callable[[list[int]], tuple[Client, CutBodies]],
    client: TestClient,
    alice: TenantKey,
    trained: Run,
    tmp_path: Path,
) -> None:
    url = f"/v1/runs/{trained.id}/model"
    whole = reference(client, alice, url)
    api, transport = cut_client([100_000, 50_000])  # lost twice: at byte 100,000, then 50,000 later
    with api:
        download = api.runs.download(trained.id, tmp_path)
    assert transport.done == 2 and download.verified
    assert download.archive.read_bytes() == whole and download.sha256 == hashlib.sha256(whole).hexdigest()
    ranges = [
        (request.headers.get("Range"), request.headers.get("If-Range")) for request in transport.cut_requests
    ]
    etag = client.head(url, headers=alice.headers).headers["etag"]
    assert ranges == [(None, None), ("bytes=100000-", etag), ("bytes=150000-", etag)]


def test_a_part_left_by_an_earlier_call_is_continued(
    api: Client, recorder: Recorder, client: TestClient, alice: TenantKey, trained: Run, tmp_path: Path
) -> None:
    url = f"/v1/runs/{trained.id}/model"
    whole = reference(client, alice, url)
    etag = client.head(url, headers=alice.headers).headers["etag"]
    name = f"{trained.id}-model.tar"
    (tmp_path / f"{name}.part").write_bytes(whole[:123_456])
    (tmp_path / f"{name}.part.json").write_text(json.dumps({"etag": etag, "size": len(whole)}))

    download = api.runs.download(trained.id, tmp_path, extract=False)
    assert download.archive.read_bytes() == whole and download.verified
    gets = recorder.sent("GET")
    assert (
        len(gets) == 1 and gets[0].headers["Range"] == "bytes=123456-" and gets[0].headers["If-Range"] == etag
    )


def test_a_damaged_part_is_found_and_downloaded_again(
    api: Client,
    recorder: Recorder,
    client: TestClient,
    alice: TenantKey,
    trained: Run,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Garbage under the part's name (as long as the real prefix, the state naming the current ETag): the
    range completes it, the sha256 differs from the server's, and the archive is downloaded again whole."""
    url = f"/v1/runs/{trained.id}/model"
    whole = reference(client, alice, url)
    etag = client.head(url, headers=alice.headers).headers["etag"]
    name = f"{trained.id}-model.tar"
    (tmp_path / f"{name}.part").write_bytes(os.urandom(200_000))
    (tmp_path / f"{name}.part.json").write_text(json.dumps({"etag": etag, "size": len(whole)}))

    with caplog.at_level(logging.WARNING, logger="bertpt.client"):
        download = api.runs.download(trained.id, tmp_path)
    assert "damaged" in caplog.text
    assert download.archive.read_bytes() == whole and download.verified and download.directory is not None
    assert [request.headers.get("Range") for request in recorder.sent("GET")] == ["bytes=200000-", None]


def test_a_part_of_an_archive_that_changed_is_not_continued(
    api: Client, recorder: Recorder, trained: Run, tmp_path: Path
) -> None:
    name = f"{trained.id}-model.tar"
    (tmp_path / f"{name}.part").write_bytes(b"x" * 5000)
    (tmp_path / f"{name}.part.json").write_text(json.dumps({"etag": '"another"', "size": 99}))
    download = api.runs.download(trained.id, tmp_path, extract=False)
    assert [request.headers.get("Range") for request in recorder.sent("GET")] == [None]
    assert download.archive.read_bytes()[:5000] != b"x" * 5000


def test_a_download_that_never_matches_the_servers_digest_is_refused(tmp_path: Path) -> None:
    """From the first byte and still not the server's sha256 (a proxy rewriting it): an error, and
    nothing left under the archive's name."""
    archive = tar_bytes({"model/config.json": b"{}"})
    headers = {
        "Content-Length": str(len(archive)),
        "ETag": '"e1"',
        "X-Content-SHA256": "0" * 64,
        "Content-Disposition": 'attachment; filename="run_x-model.tar"',
    }

    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"" if request.method == "HEAD" else archive, headers=headers)

    rewriting = Client("http://api", "bpt_key", transport=httpx.MockTransport(server))
    with rewriting as api, pytest.raises(ApiError) as info:
        api.runs.download("run_x", tmp_path)
    assert (info.value.status_code, info.value.type) == (0, "checksum_mismatch")
    assert "0" * 64 in info.value.message and left_in(tmp_path) == []


def test_the_head_requests_ride_out_a_dropped_connection_too(tmp_path: Path) -> None:
    """The HEAD before the body (a 503 from a proxy) and the one asking for the digest afterwards (no
    answer) are sent again like the body's GET, as the client's Retries allow."""
    archive = tar_bytes({"model/config.json": b"{}"})
    headers = {
        "Content-Length": str(len(archive)),
        "ETag": '"e1"',
        "Content-Disposition": 'attachment; filename="run_x-model.tar"',
    }
    heads: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, content=archive, headers=headers)
        heads.append(request.method)
        if len(heads) == 1:
            return httpx.Response(503, text="proxy: upstream unavailable")
        if len(heads) == 3:
            raise httpx.ConnectError("connection reset", request=request)
        digest = hashlib.sha256(archive).hexdigest() if len(heads) > 3 else None
        return httpx.Response(200, headers={**headers, **({"X-Content-SHA256": digest} if digest else {})})

    with Client("http://api", "bpt_key", transport=httpx.MockTransport(server), retries=NO_WAIT) as api:
        download = api.runs.download("run_x", tmp_path)
    assert len(heads) == 4 and download.verified and download.directory == tmp_path / "model"


def test_the_apis_error_for_a_run_without_a_model(
    api: Client, session: Session, alice: TenantKey, tmp_path: Path
) -> None:
    running = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    with pytest.raises(ApiError) as info:
        api.runs.download(running.id, tmp_path)
    error = info.value
    assert (error.status_code, error.type) == (
        409,
        "conflict",
    ) and "running" in error.message  # the API's body
    with pytest.raises(ApiError) as info:
        api.runs.download(running.id, tmp_path, step=5)
    assert (info.value.status_code, info.value.param) == (404, "step")
    assert left_in(tmp_path) == []


# -- safe extraction -------------------------------------------------------------------------------------


def tar_bytes(files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:  # type: ignore[assignment]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra:
            tar.addfile(info)
    return buffer.getvalue()


def member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("files", "extra"),
    [
        ({}, [member("model/weights", tarfile.SYMTYPE, "/etc/passwd")]),
        ({}, [member("model/inside", tarfile.SYMTYPE, "config.json")]),  # even a link that stays inside
        ({"model/config.json": b"{}"}, [member("model/copy", tarfile.LNKTYPE, "model/config.json")]),
        ({}, [member("model/tty", tarfile.CHRTYPE)]),
        ({}, [member("model/disk", tarfile.BLKTYPE)]),
        ({}, [member("model/pipe", tarfile.FIFOTYPE)]),
        ({"/etc/cron.d/evil": b"x"}, []),
        ({"model/../../evil": b"x"}, []),
        ({"../evil": b"x"}, []),
        ({"model\\..\\..\\evil": b"x"}, []),
        ({"C:/evil": b"x"}, []),
    ],
)
def test_unsafe_members_refuse_the_whole_archive(
    tmp_path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    archive = tmp_path / "bad.tar"
    archive.write_bytes(tar_bytes({"model/config.json": b"{}", **files}, extra))
    with pytest.raises(ApiError) as info:
        extract_archive(archive, out)
    assert (info.value.status_code, info.value.type) == (0, "unsafe_archive")
    assert left_in(out) == [] and left_in(tmp_path) == ["bad.tar", "out"]


def test_an_archive_without_one_top_folder_gets_one(tmp_path: Path) -> None:
    archive = tmp_path / "loose.tar"
    dot = member("./", tarfile.DIRTYPE)  # as `tar -C folder .` writes it
    archive.write_bytes(tar_bytes({"./config.json": b"{}", "sub/vocab.txt": b"a\n"}, [dot]))
    directory = extract_archive(archive, tmp_path)
    assert directory == tmp_path / "loose"
    assert (directory / "config.json").read_bytes() == b"{}" and (directory / "sub" / "vocab.txt").exists()


def test_extracting_again_replaces_the_earlier_extraction(tmp_path: Path) -> None:
    archive = tmp_path / "m.tar"
    archive.write_bytes(tar_bytes({"m/config.json": b"old", "m/stale.bin": b"old"}))
    assert left_in(extract_archive(archive, tmp_path)) == [EXTRACTED_MARKER, "config.json", "stale.bin"]
    archive.write_bytes(tar_bytes({"m/config.json": b"new"}))
    directory = extract_archive(archive, tmp_path)
    assert left_in(directory) == [EXTRACTED_MARKER, "config.json"]
    assert (directory / "config.json").read_bytes() == b"new"


@pytest.mark.parametrize("top", [".git", "src", "loose"])
def test_a_folder_the_client_did_not_extract_is_never_replaced(tmp_path: Path, top: str) -> None:
    """The server names the top folder: with ``--out .`` in a checkout, an archive of ``.git/`` or
    ``src/`` (or named ``loose.tar`` without a top folder) must not delete the user's."""
    (tmp_path / top).mkdir()
    (tmp_path / top / "precious").write_bytes(b"user data")
    archive = tmp_path / "loose.tar"
    files = {"config.json": b"{}"} if top == "loose" else {f"{top}/config.json": b"{}"}
    archive.write_bytes(tar_bytes(files))
    with pytest.raises(ApiError) as info:
        extract_archive(archive, tmp_path)
    assert (info.value.status_code, info.value.type) == (0, "destination_exists")
    assert str(tmp_path / top) in info.value.message
    assert left_in(tmp_path / top) == ["precious"]
    assert (tmp_path / top / "precious").read_bytes() == b"user data"
    assert left_in(tmp_path) == sorted([top, "loose.tar"])  # no temporary folder left


def test_a_file_or_link_in_the_folders_way_is_not_replaced(tmp_path: Path) -> None:
    archive = tmp_path / "m.tar"
    archive.write_bytes(tar_bytes({"m/config.json": b"{}"}))
    (tmp_path / "m").write_bytes(b"a file of the user's")
    with pytest.raises(ApiError, match="not extracted by bertpt"):
        extract_archive(archive, tmp_path)
    assert (tmp_path / "m").read_bytes() == b"a file of the user's"

    (tmp_path / "m").unlink()
    elsewhere = tmp_path / "elsewhere"
    extract_archive(archive, tmp_path).rename(elsewhere)  # an extraction, marker and all...
    (tmp_path / "m").symlink_to(elsewhere)  # ...reached through a link: not replaced either
    with pytest.raises(ApiError):
        extract_archive(archive, tmp_path)
    assert (tmp_path / "m").is_symlink() and (elsewhere / "config.json").exists()


def test_a_download_does_not_replace_a_folder_of_the_same_name(
    api: Client, trained: Run, tmp_path: Path
) -> None:
    """The archive is kept (downloaded and checked); the user's folder is untouched."""
    out = tmp_path / "out"
    root = out / f"{trained.id}-model"
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    with pytest.raises(ApiError) as info:
        api.runs.download(trained.id, out)
    assert info.value.type == "destination_exists"
    assert left_in(root) == ["notes.txt"] and left_in(out) == sorted([root.name, f"{root.name}.tar"])
    download = api.runs.download(trained.id, tmp_path / "elsewhere")
    assert download.directory is not None
    assert (download.directory / "model.safetensors").read_bytes() == WEIGHTS


def test_what_is_not_a_tar_file_is_an_error(tmp_path: Path) -> None:
    archive = tmp_path / "junk.tar"
    archive.write_bytes(os.urandom(4096))
    with pytest.raises(ApiError) as info:
        extract_archive(archive, tmp_path)
    assert info.value.type == "invalid_archive"
