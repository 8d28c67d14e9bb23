"""Benchmark: API latency under concurrent clients; a 1 GB corpus upload's throughput and memory (not a test).

It creates a PostgreSQL database (dropped at the end) and a temporary storage directory, seeds a tenant with
an API key, one running run and its metric curves (4 training series of ``--steps`` points each plus
evaluations, bulk-loaded with COPY), starts the API as ``bertpt serve --workers N`` on a free localhost
port, then measures with wrk (Debian package ``wrk``: a C load generator, so that the client takes little
of the CPU it shares with the server):

- ``GET /v1/runs/{id}`` and ``GET /v1/runs/{id}/metrics?split=train&max_points=500`` (all four training
  series) with ``--concurrency`` connections, each sending its next request as soon as the previous answer
  arrives (a closed loop: the server's saturation, where latency is queueing), then with the same clients
  pacing themselves (think times drawn from an exponential distribution, like independent users polling;
  ``--paces`` gives their means), then with one client (the service time);
- the same metrics query uncached (a ``since_step`` filter bypasses the server's bucket cache), one client;
- ``GET /healthz`` (no authentication, no database): the floor of the server and the client;
- a ``--upload-mb`` corpus upload, generated on the fly as a streamed multipart body (a block of documents
  repeated), with the peak RSS of the API process that took it (VmHWM, reset just before) against its RSS
  before.

Client, API processes and PostgreSQL share the machine's cores.

    .venv/bin/python bench/api.py         # 100k steps, 15 s per row, 50 clients, 1 GB upload
    .venv/bin/python bench/api.py --steps 10000 --seconds 5 --upload-mb 100   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
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
from app.models import Run  # noqa: E402
from app.runs.states import RunStatus  # noqa: E402
from app.tenants.service import create_api_key, create_tenant  # noqa: E402

POSTGRES_URL = os.environ.get(
    "BERTPT_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BERTPT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
TRAIN_SERIES = ("loss", "masked_lm_loss", "next_sentence_loss", "learning_rate")
EVAL_SERIES = (
    "loss",
    "masked_lm_loss",
    "next_sentence_loss",
    "masked_lm_accuracy",
    "next_sentence_accuracy",
    "perplexity",
)


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
def api_server(database_url: str, storage_dir: Path, workers: int) -> Iterator[tuple[str, int]]:
    """``bertpt serve --workers N``; yields its base URL and the supervisor's pid."""
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
    entry = "from worker.service_cli import serve_command; serve_command()"
    options = ["--port", str(port), "--workers", str(workers), "--no-migrate", "--log-level", "warning"]
    command = [sys.executable, "-c", entry, *options]
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (
                    httpx.get(f"{base}/healthz", timeout=1).status_code == 200
                    and len(api_pids(process.pid)) == workers
                ):
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.2)
        yield base, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def api_pids(pid: int) -> list[int]:
    """The processes answering requests: the server itself, or the workers of ``--workers N``."""
    children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    workers = [
        child for child in children if "resource_tracker" not in Path(f"/proc/{child}/cmdline").read_text()
    ]
    return workers or [pid]


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


# -- measurements ----------------------------------------------------------------------------------------

# wrk runs this in each connection: the API key, optional think time (exponential, mean THINK_MS), and at
# the end one JSON line with the percentiles (microseconds) and the errors.
WRK_SCRIPT = r"""
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
local think = tonumber(os.getenv("THINK_MS") or "0")
function setup(thread) math.randomseed(os.time()) end
if think > 0 then
  function delay() return math.floor(-think * math.log(1 - math.random())) end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %f, "p50": %d, "p99": %d, "max": %d, "status": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "timeout": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


@dataclass
class Latency:
    label: str
    clients: int
    think_ms: int
    result: dict[str, float]

    def row(self) -> str:
        r = self.result
        pace = f"{self.think_ms:,} ms" if self.think_ms else "none"
        p50, p99, worst = (r[name] / 1000 for name in ("p50", "p99", "max"))
        rate = r["requests"] / r["seconds"]
        kinds = {"non-2xx": r["status"], "connect": r["connect"], "read": r["read"], "write": r["write"],
                 "timeout": r["timeout"]}  # fmt: skip
        errors = ", ".join(f"{count} {kind}" for kind, count in kinds.items() if count) or "0"
        return (
            f"| {self.label} | {self.clients} | {pace} | {r['requests']:,.0f} | {p50:.1f} | {p99:.1f} | "
            f"{worst:.1f} | {rate:,.0f} | {errors} |"
        )


def measure(base: str, key: str, label: str, path: str, *, clients: int, think_ms: int, seconds: int,
            script: Path) -> Latency:  # fmt: skip
    env = {**os.environ, "BENCH_KEY": key, "THINK_MS": str(think_ms)}
    # Warm up with the same clients: connections (the API's pool grows to its size under this load), the
    # API's caches in every process, the database's buffers. The figures are the steady state.
    subprocess.run(["wrk", "-t1", f"-c{clients}", "-d3s", "-s", script, f"{base}{path}"], env=env,
                   check=True, capture_output=True)  # fmt: skip
    completed = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s", "-s", script, f"{base}{path}"],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return Latency(label, clients, think_ms, result)


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


async def upload(base: str, key: str, megabytes: int, pids: list[int]) -> dict[str, float]:
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

    rss_before = {pid: memory_kib(pid, "VmRSS") for pid in pids}
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM (the peak) to the current RSS
    samples: dict[int, list[int]] = {pid: [] for pid in pids}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            for pid in pids:
                samples[pid].append(memory_kib(pid, "VmRSS"))

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
    # The process that took the upload is the one whose peak rose the most.
    growth = {pid: max(memory_kib(pid, "VmHWM"), *samples[pid]) - rss_before[pid] for pid in pids}
    taker = max(growth, key=lambda pid: growth[pid])
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        await client.delete(f"/v1/corpora/{corpus['id']}", headers={"Authorization": f"Bearer {key}"})
    return {
        "bytes": corpus["bytes"],
        "seconds": elapsed,
        "rss_before_mib": rss_before[taker] / 1024,
        "peak_mib": (rss_before[taker] + growth[taker]) / 1024,
        "documents": corpus["documents"],
    }


async def run_benchmark(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("bench/api.py needs wrk, a C load generator: apt-get install wrk")
    print(
        f"seeding: 1 run, {len(TRAIN_SERIES)} x {args.steps:,} training points + evaluations", file=sys.stderr
    )
    with temporary_database() as database_url:
        key, run_id, points = seed(database_url, args.steps)
        storage_dir = Path(tempfile.mkdtemp(prefix="bertpt-bench-storage-"))
        script = storage_dir / "bench.lua"
        script.write_text(WRK_SCRIPT)
        try:
            with api_server(database_url, storage_dir, args.workers) as (base, pid):
                run, metrics = f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/metrics?split=train&max_points=500"
                plan = []
                for label, path in (
                    ("GET /v1/runs/{id}", run),
                    ("GET .../metrics, 4 series x 500 pts", metrics),
                ):
                    plan.append((label, path, args.concurrency, 0))
                    plan += [(label, path, args.concurrency, pace) for pace in args.paces]
                    plan.append((label, path, 1, 0))
                # A step filter bypasses the bucket cache: every request aggregates every point in SQL.
                plan.append(("same, uncached (since_step=0)", f"{metrics}&since_step=0", 1, 0))
                plan.append(("GET /healthz (no auth, no database)", "/healthz", args.concurrency, 0))
                results = []
                for label, path, clients, think_ms in plan:
                    print(f"{label}: {clients} clients, think time {think_ms} ms", file=sys.stderr)
                    results.append(measure(base, key, label, path, clients=clients, think_ms=think_ms,
                                           seconds=args.seconds, script=script))  # fmt: skip
                print(f"uploading {args.upload_mb} MB", file=sys.stderr)
                uploaded = await upload(base, key, args.upload_mb, api_pids(pid))
        finally:
            shutil.rmtree(storage_dir, ignore_errors=True)

    print(
        f"\n{os.cpu_count()} CPU cores shared by wrk, {args.workers} API processes and PostgreSQL; "
        f"{points:,} metric points in the run; {args.seconds} s per row.\n"
    )
    print("| request | clients | think time (mean) | requests | p50 ms | p99 ms | max ms | req/s | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
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
    parser.add_argument("--seconds", type=int, default=15, help="duration of each measurement")
    parser.add_argument("--concurrency", type=int, default=50, help="concurrent clients")
    parser.add_argument(
        "--paces",
        type=int,
        nargs="*",
        default=[1000, 200, 100],
        help="mean think times (ms) of paced clients",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="API processes")
    parser.add_argument("--upload-mb", type=int, default=1024, help="size of the corpus upload")
    # Killed (timeout, Ctrl-C): still stop the server and drop the database on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    asyncio.run(run_benchmark(parser.parse_args()))


if __name__ == "__main__":
    main()
