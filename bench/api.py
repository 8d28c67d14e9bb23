"""Benchmark: API latency under concurrent clients; a 1 GB corpus upload's throughput and memory (not a test).

It creates a PostgreSQL database (dropped at the end) and a temporary storage directory, seeds a tenant with
an API key, one running run and its metric curves (4 training series of ``--steps`` points each plus
evaluations, bulk-loaded with COPY), starts the API with uvicorn on a free localhost port, then measures:

- ``GET /v1/runs/{id}`` and ``GET /v1/runs/{id}/metrics?split=train&max_points=500`` (all four training
  series) with ``--concurrency`` clients sharing ``--requests`` requests (httpx.AsyncClient), and with one
  client, to tell service time from queueing;
- the same metrics query uncached (a ``since_step`` filter bypasses the server's bucket cache), one at a time;
- ``GET /healthz`` (no authentication, no database) with the same clients: what the server and the client
  cost without any work of the API's;
- a ``--upload-mb`` corpus upload, generated on the fly as a streamed multipart body (a block of documents
  repeated), with the API process's peak RSS (VmHWM, reset just before the upload) against its RSS before.

Client and server share the machine's cores: the figures include the client's own CPU time.

    .venv/bin/python bench/api.py         # 100k steps, 2,000 requests per endpoint, 50 clients, 1 GB upload
    .venv/bin/python bench/api.py --steps 10000 --requests 400 --upload-mb 100   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.db import create_db_engine, create_session_factory, session_scope, upgrade_database  # noqa: E402
from app.ids import new_id  # noqa: E402
from app.models import Run, RunStatus  # noqa: E402
from app.tenants.service import create_api_key, create_tenant  # noqa: E402

POSTGRES_URL = os.environ.get(
    "BERTPT_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BERTPT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
TRAIN_SERIES = ("loss", "mlm_loss", "nsp_loss", "learning_rate")
EVAL_SERIES = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy", "perplexity")


# -- database and seed data ------------------------------------------------------------------------------


def _admin() -> psycopg.Connection:
    url = make_url(POSTGRES_URL)
    return psycopg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password,
        dbname=url.database or "postgres", autocommit=True,
    )  # fmt: skip


@contextmanager
def temporary_database() -> Iterator[str]:
    name = f"bertpt_bench_{secrets.token_hex(4)}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(database_url: str, steps: int) -> tuple[str, str, int]:
    """A tenant with a key and a running run with its curves; returns (key, run id, metric points)."""
    upgrade_database(database_url)
    engine = create_db_engine(database_url)
    with session_scope(create_session_factory(engine)) as session:
        tenant = create_tenant(session, "bench")
        key = create_api_key(session, tenant).key
        run = Run(
            id=new_id("run"),
            tenant_id=tenant.id,
            name="bench",
            status=RunStatus.RUNNING,
            base_model="minilm-l6-h384-uncased",
            hyperparameters={"max_steps": steps},
            progress={"step": steps, "total_steps": steps * 2},
            latest={"train": {"loss": 2.0}},
            attempt=1,
        )
        session.add(run)
        run_id = run.id
    engine.dispose()

    points = 0
    buffer = io.StringIO()
    for name in TRAIN_SERIES:
        for step in range(1, steps + 1):
            buffer.write(f"{run_id}\ttrain\t{name}\t{step}\t{7.0 / (1 + step / 1000) + (step % 97) / 970}\n")
            points += 1
    for name in EVAL_SERIES:
        for step in range(0, steps + 1, 500):
            buffer.write(f"{run_id}\teval\t{name}\t{step}\t{2.0 + 1.0 / (1 + step)}\n")
            points += 1
    url = make_url(database_url)
    with psycopg.connect(
        host=url.host, port=url.port or 5432, user=url.username, dbname=url.database
    ) as conn:
        with conn.cursor().copy("COPY run_metrics (run_id, split, name, step, value) FROM STDIN") as copy:
            copy.write(buffer.getvalue())
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE run_metrics")  # what autovacuum does after a bulk load
    return key, run_id, points


# -- the server ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def api_server(database_url: str, storage_dir: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {
        **os.environ,
        "BERTPT_ENV": "test",
        "BERTPT_DATABASE_URL": database_url,
        "BERTPT_REDIS_URL": REDIS_URL,
        "BERTPT_STORAGE_URL": f"file://{storage_dir}",
        "BERTPT_MAX_UPLOAD_BYTES": str(4 << 30),
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", "app.api.main:create_app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log"]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.2)
        yield base, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


# -- measurements ----------------------------------------------------------------------------------------


@dataclass
class Latency:
    label: str
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    errors: dict[str, int]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def row(self) -> str:
        p50, p99, worst = self.percentile(0.5), self.percentile(0.99), max(self.latencies) * 1000
        return (
            f"| {self.label} | {self.concurrency} | {self.requests:,} | {p50:.1f} | {p99:.1f} | "
            f"{worst:.1f} | {self.requests / self.seconds:,.0f} | {_describe(self.errors)} |"
        )


async def measure(base: str, key: str, label: str, path: str, *, requests: int, concurrency: int) -> Latency:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    remaining = requests

    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client:
        for _ in range(min(50, requests)):  # warm up connections, caches and the pool
            (await client.get(path)).raise_for_status()

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                try:
                    response = await client.get(path)
                except httpx.TransportError as exc:  # counted, not hidden: the table shows them
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Latency(label, concurrency, requests, elapsed, latencies, errors)


def _describe(errors: dict[str, int]) -> str:
    return ", ".join(f"{count} x {kind}" for kind, count in sorted(errors.items())) or "0"


def corpus_block() -> bytes:
    """About 64 KB of documents (a few sentences each, a blank line between), repeated to make the upload."""
    words = ["enzyme", "substrate", "binding", "kinetics", "receptor", "ligand", "membrane", "protein",
             "folding", "pathway", "signal"]  # fmt: skip
    documents = []
    for d in range(200):
        sentences = [
            " ".join(words[(d + s + i) % len(words)] for i in range(12)).capitalize() + f" in study {d}-{s}."
            for s in range(3)
        ]
        documents.append("\n".join(sentences))
    return ("\n\n".join(documents) + "\n\n").encode()


async def upload(base: str, key: str, megabytes: int, pid: int) -> dict[str, float]:
    boundary = f"bench{secrets.token_hex(8)}"
    block = corpus_block()
    total = megabytes << 20
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="bench.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n").encode()  # fmt: skip
    tail = f"\r\n--{boundary}--\r\n".encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        for _ in range(max(1, total // len(block))):  # whole blocks: the corpus ends on a whole document
            yield block
        yield tail

    rss_before = memory_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM (the peak) to the current RSS
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            samples.append(memory_kib(pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={boundary}"}
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=3600) as client:
        response = await client.post("/v1/corpora", content=body(), headers=headers)
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    if response.status_code not in (200, 201):
        raise RuntimeError(f"upload failed: {response.status_code} {response.text[:500]}")
    corpus = response.json()
    peak = max(memory_kib(pid, "VmHWM"), *samples)
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        await client.delete(f"/v1/corpora/{corpus['id']}", headers={"Authorization": f"Bearer {key}"})
    return {
        "bytes": corpus["bytes"],
        "seconds": elapsed,
        "rss_before_mib": rss_before / 1024,
        "peak_mib": peak / 1024,
        "documents": corpus["documents"],
    }


async def run_benchmark(args: argparse.Namespace) -> None:
    print(
        f"seeding: 1 run, {len(TRAIN_SERIES)} x {args.steps:,} training points + evaluations", file=sys.stderr
    )
    with temporary_database() as database_url:
        key, run_id, points = seed(database_url, args.steps)
        storage_dir = Path(tempfile.mkdtemp(prefix="bertpt-bench-storage-"))
        try:
            with api_server(database_url, storage_dir) as (base, pid):
                metrics = f"/v1/runs/{run_id}/metrics?split=train&max_points=500"
                plan = [
                    ("GET /v1/runs/{id}", f"/v1/runs/{run_id}", args.concurrency, args.requests),
                    ("GET /v1/runs/{id}", f"/v1/runs/{run_id}", 1, args.requests // 10),
                    ("GET .../metrics, 4 series x 500 pts", metrics, args.concurrency, args.requests),
                    ("GET .../metrics, 4 series x 500 pts", metrics, 1, args.requests // 10),
                    # A step filter bypasses the bucket cache: every request aggregates every point in SQL.
                    ("same, uncached (since_step=0)", f"{metrics}&since_step=0", 1, 50),
                    # The floor: no authentication, no database.
                    ("GET /healthz", "/healthz", args.concurrency, args.requests),
                ]
                results = []
                for label, path, concurrency, requests in plan:
                    print(f"{label}: {requests} requests, {concurrency} clients", file=sys.stderr)
                    results.append(
                        await measure(base, key, label, path, requests=requests, concurrency=concurrency)
                    )
                print(f"uploading {args.upload_mb} MB", file=sys.stderr)
                uploaded = await upload(base, key, args.upload_mb, pid)
        finally:
            shutil.rmtree(storage_dir, ignore_errors=True)

    print(f"\n{os.cpu_count()} CPU cores shared by client and server; {points:,} metric points in the run.\n")
    print("| request | clients | requests | p50 ms | p99 ms | max ms | req/s | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for result in results:
        print(result.row())
    mib = uploaded["bytes"] / (1 << 20)
    before, peak = uploaded["rss_before_mib"], uploaded["peak_mib"]
    print("\n| upload | size | seconds | MiB/s | API RSS before | API peak RSS | growth |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| POST /v1/corpora (streamed multipart) | {mib:,.0f} MiB | {uploaded['seconds']:.1f} | "
        f"{mib / uploaded['seconds']:.0f} | {before:.0f} MiB | {peak:.0f} MiB | {peak - before:.0f} MiB |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100_000, help="points per training series")
    parser.add_argument("--requests", type=int, default=2_000, help="requests per endpoint")
    parser.add_argument("--concurrency", type=int, default=50, help="concurrent clients")
    parser.add_argument("--upload-mb", type=int, default=1024, help="size of the corpus upload")
    # Killed (timeout, Ctrl-C): still stop the server and drop the database on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    asyncio.run(run_benchmark(parser.parse_args()))


if __name__ == "__main__":
    main()
