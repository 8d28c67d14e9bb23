"""The whole service on this machine in a few minutes: ``make demo`` (``.venv/bin/python scripts/demo.py``).

1. an embedded SQLite database and a storage directory under ``./var/``, migrated;
2. Redis: the one answering on 127.0.0.1:6379, else a ``redis-server`` started here;
3. the API (``bertpt serve``) and one training worker (``bertpt worker``), logs under ``./var/logs/``;
4. a tenant and an API key; a corpus built from the standard library's docstrings, uploaded over REST;
5. a short continual pre-training run of the real MiniLM checkpoint, followed live (Server-Sent Events);
6. the trained model downloaded, extracted, loaded with ``from_pretrained`` and asked to fill a [MASK].

The processes it started are stopped at the end (``--keep-running`` leaves the API and worker up, to
explore ``/docs``). Run again, it reuses ``./var`` (the prepared data is cached); ``--reset`` starts
over.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

VAR = ROOT / "var"
LOGS = VAR / "logs"
DEMO = VAR / "demo"
DATABASE = VAR / "demo.db"
STORAGE = VAR / "storage"
QUEUE = "bertpt-demo"  # a queue of its own: another worker on the same Redis never takes these runs
BASE_MODEL = "minilm-l6-h384-uncased"
# About a minute of training on two CPU cores. The MiniLM checkpoint has no pre-training heads: they
# start from random values, hence the high learning rate and the large drop of the loss from the baseline.
HYPERPARAMETERS: dict[str, Any] = {
    "max_steps": 40,
    "batch_size": 16,
    "max_seq_length": 64,
    "learning_rate": 2e-4,
    "warmup_ratio": 0.1,
    "eval_every_steps": 10,
    "checkpoint_every_steps": 20,
    "logging_every_steps": 5,
    "eval_documents": 40,
}
MASKED_SENTENCE = "This module provides functions for reading and writing [MASK] files."


def say(message: str = "") -> None:
    print(message, flush=True)


def fail(message: str) -> NoReturn:
    say(f"\nerror: {message}")
    raise SystemExit(1)


# -- processes --------------------------------------------------------------------------------------------


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Processes:
    started: list[Started] = field(default_factory=list)
    redis_pidfile: Path | None = None

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Started:
        log = LOGS / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        started = Started(name, process, log)
        self.started.append(started)
        return started

    def stop(self) -> None:
        for started in reversed(self.started):
            if started.process.poll() is None:
                # SIGTERM: the worker's warm shutdown (its run is over), uvicorn's graceful one.
                os.killpg(started.process.pid, signal.SIGTERM)
        for started in reversed(self.started):
            try:
                started.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(started.process.pid, signal.SIGKILL)
                started.process.wait(timeout=10)
        if self.redis_pidfile is not None and self.redis_pidfile.exists():
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(self.redis_pidfile.read_text().strip()), signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def ensure_redis(processes: Processes) -> str:
    if redis_answers(6379):
        say("  Redis: using the server on 127.0.0.1:6379")
        return "redis://127.0.0.1:6379/0"
    server = shutil.which("redis-server")
    if server is None:
        fail(
            "no Redis answers on 127.0.0.1:6379 and redis-server is not installed. Install it (Debian/Ubuntu:"
            " `apt-get install redis-server`, macOS: `brew install redis`) or start one, then run the demo "
            "again."
        )
    port = free_port()
    pidfile = VAR / "redis.pid"
    options = {"bind": "127.0.0.1", "port": port, "save": "", "appendonly": "no", "daemonize": "yes",
               "pidfile": pidfile, "logfile": LOGS / "redis.log", "dir": VAR}  # fmt: skip
    subprocess.run(
        [server, *(part for name, value in options.items() for part in (f"--{name}", str(value)))], check=True
    )
    processes.redis_pidfile = pidfile
    for _ in range(50):
        if redis_answers(port):
            say(f"  Redis: started redis-server on 127.0.0.1:{port} (log {LOGS / 'redis.log'})")
            return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    fail(f"redis-server did not answer on port {port}; see {LOGS / 'redis.log'}")


def bertpt(command: str) -> list[str]:
    """``bertpt <command>`` run by this interpreter (the commands of worker.service_cli)."""
    from worker import cli

    if command in cli.cli.commands:
        return [sys.executable, "-m", "worker", command]
    return [sys.executable, "-c", f"from worker.service_cli import {command}_command as c; c()"]


def wait_until(check: Any, what: str, started: Started, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if started.process.poll() is not None:
            break
        time.sleep(0.3)
    tail = started.log.read_text(errors="replace")[-3000:] if started.log.exists() else ""
    fail(f"{what} (see {started.log}):\n{tail}")


# -- the API client ----------------------------------------------------------------------------------------


def check(response: httpx.Response, expected: tuple[int, ...] = (200, 201)) -> dict[str, Any]:
    if response.status_code not in expected:
        request = response.request
        fail(f"{request.method} {request.url.path} answered {response.status_code}: {response.text}")
    return response.json() if response.content else {}


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a Server-Sent Events response."""
    event, data = "message", list[str]()
    for line in response.iter_lines():
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def follow(client: httpx.Client, run_id: str) -> None:
    """Print the run's progress from its live stream until it ends (or poll, if streaming fails)."""
    total = HYPERPARAMETERS["max_steps"]
    try:
        with client.stream(
            "GET", f"/v1/runs/{run_id}/stream", timeout=httpx.Timeout(10, read=120)
        ) as response:
            if response.status_code != 200:
                raise httpx.HTTPError(f"stream answered {response.status_code}")
            for event, data in sse_events(response):
                if event == "metric" and data.get("split") == "train":
                    m = data["metrics"]
                    say(
                        f"  step {data['step']:>3}/{total}  loss {fmt(m.get('loss'))}  masked_lm_accuracy "
                        f"{fmt(m.get('masked_lm_accuracy'), 3)}  lr {m.get('learning_rate', 0):.2e}  "
                        f"tokens/s {m.get('tokens_per_second', 0):,.0f}"
                    )
                elif event == "event":
                    if data.get("type") not in ("queued",):
                        say(f"  [{data.get('type')}] {data.get('message')}")
                elif event == "status" and data.get("status") in ("succeeded", "failed", "cancelled"):
                    return
        return
    except httpx.HTTPError as exc:
        say(f"  (live stream unavailable: {exc}; polling instead)")
    while True:
        run = check(client.get(f"/v1/runs/{run_id}"))
        progress = run.get("progress") or {}
        say(
            f"  {run['status']}: step {progress.get('step', 0)}/{progress.get('total_steps') or total}  loss "
            f"{fmt(((run.get('latest') or {}).get('train') or {}).get('loss'))}"
        )
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return
        time.sleep(3)


# -- the demo ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep-running", action="store_true", help="Leave the API and the worker running.")
    parser.add_argument(
        "--reset", action="store_true", help="Delete ./var's demo database and storage first."
    )
    args = parser.parse_args()
    started_at = time.monotonic()

    if args.reset:
        DATABASE.unlink(missing_ok=True)
        shutil.rmtree(STORAGE, ignore_errors=True)
        shutil.rmtree(DEMO, ignore_errors=True)
    for directory in (LOGS, DEMO, STORAGE):
        directory.mkdir(parents=True, exist_ok=True)

    processes = Processes()
    try:
        run_demo(processes, args, started_at)
    except KeyboardInterrupt:
        say("\ninterrupted")
        args.keep_running = False
    finally:
        if not args.keep_running:
            say("\nstopping the processes started by the demo")
            processes.stop()


def run_demo(processes: Processes, args: argparse.Namespace, started_at: float) -> None:
    say("1. database and services")
    redis_url = ensure_redis(processes)
    env = {
        **os.environ,
        "BERTPT_ENV": "dev",
        "BERTPT_DATABASE_URL": f"sqlite:///{DATABASE}",
        "BERTPT_STORAGE_URL": f"file://{STORAGE}",
        "BERTPT_REDIS_URL": redis_url,
        "BERTPT_TRAINING_QUEUE": QUEUE,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update({key: value for key, value in env.items() if key.startswith("BERTPT_")})

    from app.config import get_settings
    from app.db import create_db_engine, create_session_factory, session_scope, upgrade_database

    upgrade_database(get_settings().database_url)
    say(f"  database: {DATABASE} (migrated)")

    port = free_port()
    api = processes.start("api", [*bertpt("serve"), "--port", str(port), "--no-migrate"], env)
    worker = processes.start("worker", [*bertpt("worker"), "--hostname", "demo@%h"], env)
    base_url = f"http://127.0.0.1:{port}"

    def api_ready() -> bool:
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(api_ready, "the API did not start", api, timeout=90)
    say(f"  API: {base_url} (pid {api.process.pid}, log {api.log})")
    wait_until(
        lambda: " ready." in worker.log.read_text(errors="replace"), "the worker did not start", worker, 90
    )
    say(f"  worker: pid {worker.process.pid}, queue {QUEUE!r} (log {worker.log})")

    say("\n2. a tenant, an API key, a corpus")
    from app.tenants.service import create_api_key, create_tenant

    engine = create_db_engine(get_settings().database_url)
    with session_scope(create_session_factory(engine)) as session:
        tenant = create_tenant(session, f"demo-{secrets.token_hex(3)}")
        key = create_api_key(session, tenant).key
    engine.dispose()
    say(f"  tenant {tenant.name} ({tenant.id}), API key {key[:12]}...")

    from worker.pretraining.samples import write_sample_corpus

    corpus_path = write_sample_corpus(DEMO / "stdlib-docstrings.txt")  # about 1.5 MB
    client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    with corpus_path.open("rb") as f:
        corpus = check(
            client.post("/v1/corpora", files={"file": (corpus_path.name, f)}, data={"name": "stdlib"})
        )
    say(
        f"  corpus {corpus['id']}: {corpus['documents']:,} documents, {corpus['sentences']:,} sentences, "
        f"{corpus['bytes'] / 1e3:,.0f} kB (built from the standard library's docstrings: {corpus_path})"
    )

    say(f"\n3. continual pre-training of {BASE_MODEL}")
    body = {
        "name": "demo",
        "base_model": BASE_MODEL,
        "corpus_id": corpus["id"],
        "hyperparameters": HYPERPARAMETERS,
    }
    run = check(client.post("/v1/runs", json=body))
    run_id = run["id"]
    say(f"  run {run_id} queued: {json.dumps(HYPERPARAMETERS)}")
    train_started = time.monotonic()
    follow(client, run_id)
    run = check(client.get(f"/v1/runs/{run_id}"))
    say(f"  run {run['status']} in {time.monotonic() - train_started:.0f} s")
    if run["status"] != "succeeded":
        fail(f"the run {run['status']}: {run.get('error')}; see {worker.log}")

    say("\n4. baseline vs final evaluation (held-out documents)")
    baseline, final = run["baseline"].get("eval", {}), (run["latest"].get("eval") or {})
    for name in (
        "masked_lm_loss",
        "masked_lm_accuracy",
        "perplexity",
        "next_sentence_loss",
        "next_sentence_accuracy",
    ):
        if name in baseline or name in final:
            say(f"  {name:<24} {fmt(baseline.get(name)):>12} -> {fmt(final.get(name)):>12}")

    say("\n5. the trained model")
    model_dir = download_model(client, run_id)
    smoke_test(model_dir)

    elapsed = time.monotonic() - started_at
    say(f"\ndone in {elapsed / 60:.1f} min. Where things are:")
    say(f"  database        {DATABASE}")
    say(f"  storage         {STORAGE} (run output: {STORAGE / 'runs' / run_id})")
    say(f"  logs            {LOGS}")
    say(f"  model           {model_dir}")
    say(f"  API docs        {base_url}/docs")
    if args.keep_running:
        say(f"  API key         {key}   (Authorize in /docs with it)")
        pids = " ".join(str(started.process.pid) for started in processes.started)
        say(f"  still running   API and worker (pids {pids}); stop them with: kill {pids}")


def download_model(client: httpx.Client, run_id: str) -> Path:
    archive = DEMO / f"{run_id}-model.tar"
    target = DEMO / "models" / run_id
    with client.stream("GET", f"/v1/runs/{run_id}/model") as response:
        if response.status_code != 200:
            response.read()
            say(f"  download failed ({response.status_code}: {response.text}); using the model in storage")
            from app.db import create_db_engine, create_session_factory
            from app.models import Run

            engine = create_db_engine(f"sqlite:///{DATABASE}")
            with create_session_factory(engine)() as session:
                run = session.get(Run, run_id)
                key = run.output_storage_key if run else None
            engine.dispose()
            if key is None:
                fail("the run has no output_storage_key")
            return STORAGE / str(key)
        with archive.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with tarfile.open(archive, "r:") as tar:
        tar.extractall(target, filter="data")
    folders = [path for path in target.iterdir() if path.is_dir()]
    model_dir = folders[0] if len(folders) == 1 else target
    say(f"  downloaded {archive} ({archive.stat().st_size / 1e6:,.1f} MB), extracted to {model_dir}")
    return model_dir


def smoke_test(model_dir: Path) -> None:
    import torch
    import transformers
    from transformers import AutoTokenizer, BertForMaskedLM, BertForPreTraining

    transformers.logging.set_verbosity_error()  # BertForMaskedLM leaves the NSP head and pooler: expected
    transformers.logging.disable_progress_bar()

    pretraining = BertForPreTraining.from_pretrained(model_dir)
    parameters = sum(p.numel() for p in pretraining.parameters())
    say(f"  BertForPreTraining.from_pretrained: {parameters / 1e6:.1f}M parameters, both heads")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    masked_lm = BertForMaskedLM.from_pretrained(model_dir).eval()
    inputs = tokenizer(MASKED_SENTENCE, return_tensors="pt")
    with torch.no_grad():
        logits = masked_lm(**inputs).logits
    position = (inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0].item()
    top = torch.topk(logits[0, position].softmax(-1), 5)
    guesses = ", ".join(
        f"{str(tokenizer.decode([int(index)])).strip()} ({prob:.2f})"
        for prob, index in zip(top.values, top.indices, strict=True)
    )
    say(f"  BertForMaskedLM fills {MASKED_SENTENCE!r}: {guesses}")
    say(
        "  (a few dozen steps teach the new masked-LM head mostly the frequent tokens; train longer for more)"
    )


if __name__ == "__main__":
    main()
