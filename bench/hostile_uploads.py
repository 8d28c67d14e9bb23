"""Benchmark: decompression bombs against a real API (not a test).

The tester's upload of issue 10: a ``.txt.gz`` of about 1 MB that inflates to 1 GiB of newlines. This
script builds it, starts ``bertpt serve`` (one process, the default 8 threads and 4 upload slots) on a
fresh PostgreSQL database and a temporary storage directory, and measures:

- one bomb: the time to the answer, and its status;
- nine bombs at once while ``/healthz`` is asked every 20 ms: every answer's status and time, the wall
  time, and the slowest ``/healthz`` answer;
- the temporary files left in the storage afterwards.

    .venv/bin/python bench/hostile_uploads.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api import api_server, seed, temporary_database  # noqa: E402

INFLATED_BYTES = 1 << 30
CHUNK = 16 << 20


def newline_bomb() -> bytes:
    """A gzip member of INFLATED_BYTES newlines (about 1 MB), compressed chunk by chunk."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    block = b"\n" * CHUNK
    parts = [compressor.compress(block) for _ in range(INFLATED_BYTES // CHUNK)]
    parts.append(compressor.flush())
    return b"".join(parts)


async def upload(client: httpx.AsyncClient, key: str, bomb: bytes, name: str) -> tuple[int, float, str]:
    started = time.perf_counter()
    response = await client.post(
        "/v1/corpora",
        files={"file": (name, bomb, "application/gzip")},
        headers={"Authorization": f"Bearer {key}"},
        timeout=600,
    )
    message = response.json().get("error", {}).get("message", "") if response.status_code >= 400 else ""
    return response.status_code, time.perf_counter() - started, message


async def poll_health(client: httpx.AsyncClient, stop: asyncio.Event) -> list[float]:
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        response = await client.get("/healthz", timeout=30)
        assert response.status_code == 200, response.status_code
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.02)
    return latencies


async def measure(base: str, key: str, bomb: bytes) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        status, seconds, message = await upload(client, key, bomb, "bomb.txt.gz")
        print("\n| upload | answers | seconds | message |\n|---|---|---:|---|")
        print(f"| one bomb | {status} | {seconds:.2f} | {message} |")

    # Separate connections for the health checks and each upload, as separate clients would have.
    async with httpx.AsyncClient(base_url=base) as health, httpx.AsyncClient(base_url=base) as uploads:
        stop = asyncio.Event()
        poller = asyncio.create_task(poll_health(health, stop))
        started = time.perf_counter()
        results = await asyncio.gather(*(upload(uploads, key, bomb, f"bomb{i}.txt.gz") for i in range(9)))
        wall = time.perf_counter() - started
        await asyncio.sleep(0.2)
        stop.set()
        latencies = await poller
    statuses = Counter(status for status, _, _ in results)
    slowest = max(seconds for _, seconds, _ in results)
    answers = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
    print(f"| nine bombs at once | {answers} | {wall:.2f} (slowest answer {slowest:.2f}) | |")
    print(
        f"\n/healthz during the nine: {len(latencies)} answers, all 200, "
        f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms, "
        f"slowest {max(latencies) * 1000:.1f} ms"
    )


def main() -> None:
    started = time.perf_counter()
    bomb = newline_bomb()
    print(
        f"bomb: {len(bomb):,} bytes of gzip -> {INFLATED_BYTES:,} bytes "
        f"(built in {time.perf_counter() - started:.1f} s)"
    )
    with temporary_database() as database_url, tempfile.TemporaryDirectory() as tmp:
        key, _run_id, _points = seed(database_url, steps=1)
        storage = Path(tmp) / "storage"
        with api_server(database_url, storage, workers=1) as (base, _pid):
            asyncio.run(measure(base, key, bomb))
        left = [path.name for path in (storage / ".tmp").glob("*")] if (storage / ".tmp").is_dir() else []
        print(f"temporary files left in the storage: {len(left)} {left}")


if __name__ == "__main__":
    main()
