"""The service on S3 storage: the API and a worker (real processes) on a bucket of a real S3-protocol
server (moto's, on loopback), each with a local cache of its own. A tiny BERT goes from upload to a
downloaded model that loads; the worker's cache is wiped before a second run, which starts from the first
run's model (fetched again from the bucket); deleting a run deletes its objects. Nothing is written to a
storage directory on disk."""

from __future__ import annotations

import io
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import pytest

from app.config import Settings
from tests.support import TINY_HYPERPARAMETERS

if TYPE_CHECKING:
    from tests.e2e.conftest import ApiServer, Worker

pytestmark = pytest.mark.slow

HYPERPARAMETERS = {**TINY_HYPERPARAMETERS, "checkpoint_every_steps": 3, "keep_checkpoints": 1}
PREFIX = "deployment"


def bucket_objects(bucket: str, prefix: str = PREFIX) -> dict[str, int]:
    client = boto3.session.Session().client("s3")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


@pytest.mark.timeout(300)
def test_a_run_on_s3_storage_from_upload_to_downloaded_model(
    settings: Settings,
    s3_bucket: str,
    start_api: Callable[..., ApiServer],
    start_worker: Callable[..., Worker],
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    on_s3 = settings.model_copy(update={"storage_url": f"s3://{s3_bucket}/{PREFIX}"})
    api_cache, worker_cache = tmp_path / "api-cache", tmp_path / "worker-cache"
    api = start_api(on_s3.model_copy(update={"storage_cache_dir": str(api_cache)}))
    worker = start_worker(on_s3.model_copy(update={"storage_cache_dir": str(worker_cache)}))

    with httpx.Client(base_url=api.base_url, timeout=60) as client:
        first = submit_run(client, headers, HYPERPARAMETERS)
        run = wait_for_run(client, headers, first)
        assert run["status"] == "succeeded", f"{run}\n--- worker log ---\n{worker.log()[-6000:]}"

        stored = bucket_objects(s3_bucket)
        model_files = {
            key.rsplit("/", 1)[1] for key in stored if key.startswith(f"{PREFIX}/runs/{first}/model/")
        }
        assert {"config.json", "model.safetensors", "bertpt_manifest.json"} <= model_files
        kept = {key.split("/")[4] for key in stored if key.startswith(f"{PREFIX}/runs/{first}/checkpoints/")}
        assert kept == {"checkpoint-6"}  # checkpoint-3 rotated away in the bucket too
        assert not [key for key in stored if "/.tmp/" in key or "/tmp-" in key]
        assert not (tmp_path / "storage").exists()
        # The worker released its copy of the run's directory once the run ended.
        assert not (worker_cache / "work" / "runs" / first).exists()

        # The model, streamed from the bucket; a range of it too.
        download = client.get(f"/v1/runs/{first}/model", headers=headers)
        assert download.status_code == 200, download.text
        ranged = client.get(f"/v1/runs/{first}/model", headers={**headers, "Range": "bytes=1000-1999"})
        assert ranged.status_code == 206 and ranged.content == download.content[1000:2000]
        extracted = tmp_path / "downloaded"
        with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:") as tar:
            tar.extractall(extracted, filter="data")
        (model_dir,) = [path for path in extracted.iterdir() if path.is_dir()]
        from transformers import BertForPreTraining

        assert BertForPreTraining.from_pretrained(model_dir).config.hidden_size == 32

        # Between runs the worker loses its cache (a new container); the next run, from the first
        # run's model, fetches what it needs from the bucket again.
        shutil.rmtree(worker_cache)
        body = {
            "name": "from the first",
            "base_model": f"run:{first}",
            "corpus_id": run["corpus_id"],
            "hyperparameters": {**HYPERPARAMETERS, "max_steps": 3},
        }
        response = client.post("/v1/runs", json=body, headers=headers)
        assert response.status_code == 201, response.text
        second = response.json()["id"]
        run = wait_for_run(client, headers, second)
        assert run["status"] == "succeeded", f"{run}\n--- worker log ---\n{worker.log()[-6000:]}"
        fetched = worker_cache / "objects" / "runs" / first / "model"
        assert len(list(fetched.glob("@*/model/model.safetensors"))) == 1

        assert client.delete(f"/v1/runs/{second}", headers=headers).status_code == 204
        left = bucket_objects(s3_bucket)
        assert not [key for key in left if key.startswith(f"{PREFIX}/runs/{second}/")]
        assert [key for key in left if key.startswith(f"{PREFIX}/runs/{first}/model/")]
    uploads = boto3.session.Session().client("s3").list_multipart_uploads(Bucket=s3_bucket)
    assert uploads.get("Uploads", []) == []
