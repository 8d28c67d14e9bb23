"""The whole service on this machine in a few minutes: ``make demo`` (``.venv/bin/python scripts/demo.py``).

1. an embedded SQLite database and a storage directory under ``./var/``, migrated;
2. Redis: the one answering on 127.0.0.1:6379, else a ``redis-server`` started here;
3. the API (``bertpt serve``) and one training worker (``bertpt worker``), logs under ``./var/logs/``;
4. a tenant and an API key; a corpus built from the standard library's docstrings, uploaded with the
   Python client (``bertpt.client``);
5. a short continual pre-training run of the real MiniLM checkpoint, followed live as ``bertpt runs follow``
   shows it (``bertpt.cli.follow.follow_run``: a progress bar with the API's ETA, then the baseline-vs-final
   table);
6. the trained model downloaded (its sha256 checked), extracted, loaded with ``from_pretrained`` and asked
   to fill a [MASK];
7. what ran and where, the run's files (TensorBoard logs, metrics), the next steps, and what the demo
   leaves on disk.

The processes it started are stopped at the end (``--keep-running`` leaves the API and the worker up, to
explore ``/docs`` and the dashboard at ``/ui/``). Run again, it reuses ``./var`` (the prepared data is
cached: no second preparation); ``--reset`` first deletes the earlier demo runs, corpora, downloads, database
and logs, keeping that cache; ``make clean`` deletes ``./var`` and ``.venv``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402

from app.storage.keys import PREPARED_DATA, run_directory_key  # noqa: E402
from bertpt.cli.follow import EXIT_INTERRUPTED, follow_run  # noqa: E402
from bertpt.client import ApiError, Client  # noqa: E402
from worker.pretraining.layout import RunLayout, is_training_state  # noqa: E402

QUEUE = "bertpt-demo"  # a queue of its own: another worker on the same Redis never takes these runs
BASE_MODEL = "minilm-l6-h384-uncased"
# About 20 s of training on 2 idle CPU cores (several times that on a busy machine), so that a fresh clone,
# venv included, is done in under 5 minutes. The MiniLM checkpoint has no pre-training heads: they start
# from random values, hence the high learning rate and the large drop of the masked-LM loss from the
# baseline within the first 10 steps.
HYPERPARAMETERS: dict[str, Any] = {
    "max_steps": 20,
    "batch_size": 16,
    "max_seq_length": 64,
    "learning_rate": 2e-4,
    "warmup_ratio": 0.1,
    "eval_every_steps": 10,
    "eval_documents": 20,  # about 190 pairs: an evaluation takes seconds, not tens of seconds
    # One checkpoint, at the end: each one carries the optimizer state (about 3x the weights), and the
    # demo never resumes.
    "checkpoint_every_steps": 0,
    "logging_every_steps": 1,  # a point per step: a steady progress bar and ETA
}
MASKED_SENTENCE = "This module provides functions for reading and writing [MASK] files."
MB = 1e6


def say(message: str = "") -> None:
    print(message, flush=True)


def fail(message: str) -> NoReturn:
    say(f"\nerror: {message}")
    raise SystemExit(1)


# -- where things are --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoPaths:
    """What the demo keeps under ``var`` (``./var``)."""

    var: Path

    @property
    def database(self) -> Path:
        return self.var / "demo.db"

    @property
    def storage(self) -> Path:
        """The service's local storage (``BERTPT_STORAGE_URL``), laid out by :mod:`app.storage.keys`."""
        return self.var / "storage"

    @property
    def prepared(self) -> Path:
        """The prepared-data cache, shared by every run on the same corpus and settings."""
        return self.storage / PREPARED_DATA

    @property
    def logs(self) -> Path:
        return self.var / "logs"

    @property
    def downloads(self) -> Path:
        """The demo's own files: the sample corpus and the downloaded models."""
        return self.var / "demo"

    def run(self, run_id: str) -> RunLayout[Path]:
        """The run's directory in storage, as the training library lays it out."""
        return RunLayout(self.storage / run_directory_key(run_id))


def reset(paths: DemoPaths) -> None:
    """Start over: delete the database, the storage (runs, corpora...) but for the prepared-data cache, the
    downloads and the logs. The cache is keyed by the corpus and the settings, not by the database: it
    stays valid, and a re-run skips the preparation."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        paths.database.with_name(paths.database.name + suffix).unlink(missing_ok=True)
    if paths.storage.is_dir():
        for child in paths.storage.iterdir():
            if child == paths.prepared:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    shutil.rmtree(paths.downloads, ignore_errors=True)
    shutil.rmtree(paths.logs, ignore_errors=True)


def directory_bytes(path: Path, keep: Callable[[Path], bool] | None = None) -> int:
    """Bytes of the files under ``path`` (a file: its size; nothing there: 0), of those ``keep`` accepts
    when given. Links are counted as links, never followed."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size if keep is None or keep(path) else 0
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            file = Path(folder, name)
            if keep is None or keep(file):
                total += file.lstat().st_size
    return total


def megabytes(size: int) -> str:
    return f"{size / MB:,.0f} MB" if size >= 10 * MB else f"{size / MB:,.1f} MB"


def disk_report(paths: DemoPaths, run_id: str, model_dir: Path) -> list[str]:
    """What ``var`` holds after the demo, in lines: this run's files in storage (its checkpoint, and how
    much of it is the training state only resuming needs; its model), the downloaded model, the
    prepared-data cache, and the rest (earlier runs, corpora, database, logs); then how to free it."""
    run = paths.run(run_id)
    total = directory_bytes(paths.var)
    in_storage = directory_bytes(run.root)
    checkpoints = directory_bytes(run.checkpoints)
    training_state = directory_bytes(run.checkpoints, keep=lambda file: is_training_state(file.name))
    downloaded = directory_bytes(model_dir)
    prepared = directory_bytes(paths.prepared)
    rest = total - in_storage - downloaded - prepared
    lines = [
        f"disk: {paths.var} holds {megabytes(total)}",
        f"  this run          {megabytes(in_storage):>9}  its checkpoint {megabytes(checkpoints)} ("
        f"{megabytes(training_state)} of it the optimizer and other state only resuming needs), its model "
        f"{megabytes(directory_bytes(run.model))}",
        f"  downloaded model  {megabytes(downloaded):>9}  (the .tar deleted once extracted)",
        f"  prepared data     {megabytes(prepared):>9}  cached: a re-run skips the preparation",
        f"  the rest          {megabytes(max(rest, 0)):>9}  earlier demo runs, corpora, database, logs",
        "  make demo DEMO_ARGS=--reset deletes the earlier runs, corpora, downloads, database and logs (not "
        "the prepared data); make clean deletes var/ and .venv",
    ]
    return lines


# -- processes --------------------------------------------------------------------------------------------


def log_file(logs: Path, name: str) -> Path:
    """The log of the process ``name`` (``api``, ``worker``, ``redis``) the demo starts."""
    return logs / f"{name}.log"


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Processes:
    logs: Path
    started: list[Started] = field(default_factory=list)
    redis_pidfile: Path | None = None

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Started:
        log = log_file(self.logs, name)
        with log.open("wb") as out:  # this demo's log only: the readiness checks read it
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        started = Started(name, process, log)
        self.started.append(started)
        return started

    def pids(self) -> list[int]:
        pids = [started.process.pid for started in self.started if started.process.poll() is None]
        if self.redis_pidfile is not None and self.redis_pidfile.exists():
            with contextlib.suppress(ValueError):
                pids.append(int(self.redis_pidfile.read_text().strip()))
        return pids

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


def ensure_redis(processes: Processes, var: Path) -> str:
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
    pidfile = var / "redis.pid"
    log = log_file(processes.logs, "redis")
    options = {"bind": "127.0.0.1", "port": port, "save": "", "appendonly": "no", "daemonize": "yes",
               "pidfile": pidfile, "logfile": log, "dir": var}  # fmt: skip
    subprocess.run(
        [server, *(part for name, value in options.items() for part in (f"--{name}", str(value)))], check=True
    )
    processes.redis_pidfile = pidfile
    for _ in range(50):
        if redis_answers(port):
            say(f"  Redis: started redis-server on 127.0.0.1:{port} (log {log})")
            return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    fail(f"redis-server did not answer on port {port}; see {log}")


def bertpt(command: str) -> list[str]:
    """``bertpt <command>`` run by this interpreter (the commands of worker.service_cli)."""
    from worker import cli

    if command in cli.cli.commands:
        return [sys.executable, "-m", "worker", command]
    return [sys.executable, "-c", f"from worker.service_cli import {command}_command as c; c()"]


def wait_until(check: Callable[[], bool], what: str, started: Started, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if started.process.poll() is not None:
            break
        time.sleep(0.3)
    tail = started.log.read_text(errors="replace")[-3000:] if started.log.exists() else ""
    fail(f"{what} (see {started.log}):\n{tail}")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# -- the demo ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the demo made, for its closing lines."""

    base_url: str
    key: str
    redis_url: str
    run_id: str
    model_dir: Path
    pages: dict[str, bool]  # /docs and /ui/: whether they answered


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--keep-running", action="store_true", help="Leave the API and the worker running at the end."
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="First delete the earlier demo runs, corpora, downloads, database and logs under ./var (the "
        "prepared-data cache is kept).",
    )
    args = parser.parse_args()
    started_at = time.monotonic()
    paths = DemoPaths(ROOT / "var")

    if args.reset:
        reset(paths)
        say(f"reset: {paths.var} emptied but for the prepared-data cache ({paths.prepared})")
    for directory in (paths.logs, paths.downloads, paths.storage):
        directory.mkdir(parents=True, exist_ok=True)

    processes = Processes(paths.logs)
    outcome = None
    try:
        outcome = run_demo(processes, paths)
    except KeyboardInterrupt:
        say("\ninterrupted")
        args.keep_running = False
    finally:
        if not args.keep_running:
            say("\nstopping the processes started by the demo")
            processes.stop()
    if outcome is not None:
        say(f"\ndone in {(time.monotonic() - started_at) / 60:.1f} min")
        for line in closing_lines(outcome, paths, processes.pids() if args.keep_running else None):
            say(line)


def run_demo(processes: Processes, paths: DemoPaths) -> Outcome:
    say("1. database and services")
    redis_url = ensure_redis(processes, paths.var)
    env = {
        **os.environ,
        "BERTPT_ENV": "dev",
        "BERTPT_DATABASE_URL": f"sqlite:///{paths.database}",
        "BERTPT_STORAGE_URL": f"file://{paths.storage}",
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
    say(f"  database: {paths.database} (migrated)")

    port = free_port()
    api = processes.start("api", [*bertpt("serve"), "--port", str(port), "--no-migrate"], env)
    worker = processes.start("worker", [*bertpt("worker"), "--hostname", "demo@%h"], env)
    base_url = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{base_url}/healthz"), "the API did not start", api, timeout=120)
    say(f"  API: {base_url} (log {api.log})")
    wait_until(
        lambda: " ready." in worker.log.read_text(errors="replace"), "the worker did not start", worker, 120
    )
    say(f"  worker: queue {QUEUE!r} (log {worker.log})")

    say("\n2. a tenant, an API key, a corpus")
    from app.tenants.service import create_api_key, create_tenant

    engine = create_db_engine(get_settings().database_url)
    with session_scope(create_session_factory(engine)) as session:
        tenant = create_tenant(session, f"demo-{secrets.token_hex(3)}")
        key = create_api_key(session, tenant).key
    engine.dispose()
    say(f"  tenant {tenant.name} ({tenant.id}), API key {key[:12]}...")

    from worker.pretraining.samples import write_sample_corpus

    corpus_path = write_sample_corpus(paths.downloads / "stdlib-docstrings.txt")  # about 1.5 MB
    try:
        with Client(base_url, key, timeout=120) as client:
            corpus = client.corpora.upload(corpus_path, name="stdlib")
            say(
                f"  corpus {corpus.id}: {corpus.documents:,} documents, {corpus.sentences:,} sentences, "
                f"{corpus.bytes / 1e3:,.0f} kB (the standard library's docstrings: {corpus_path})"
            )
            run_id = train(client, corpus.id, worker)
            model_dir = download_model(client, run_id, paths.downloads / "models")
    except ApiError as exc:
        fail(str(exc))
    smoke_test(model_dir)
    return Outcome(
        base_url=base_url,
        key=key,
        redis_url=redis_url,
        run_id=run_id,
        model_dir=model_dir,
        pages={page: answers(f"{base_url}{page}") for page in ("/docs", "/ui/")},
    )


def train(client: Client, corpus_id: str, worker: Started) -> str:
    """Submit the demo's run and follow it live until it ends (``bertpt runs follow``'s display); its id."""
    say(f"\n3. continual pre-training of {BASE_MODEL}")
    body = {
        "name": "demo",
        "base_model": BASE_MODEL,
        "corpus_id": corpus_id,
        "hyperparameters": HYPERPARAMETERS,
    }
    run = client.runs.create(body)
    settings = ", ".join(f"{name} {value}" for name, value in HYPERPARAMETERS.items())
    say(f"  run {run.id} queued: {settings}")
    started = time.monotonic()
    # A log file or a pipe gets plain lines (follow_run prints one every tenth of the steps), each on one
    # line, and tables 120 columns wide (rich's default there: 80).
    terminal = sys.stdout.isatty()
    console = Console(highlight=False, width=None if terminal else 120, soft_wrap=not terminal)
    outcome = follow_run(client, run.id, console)
    if outcome == EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    run = client.runs.get(run.id)
    say(f"  run {run.status} in {time.monotonic() - started:.0f} s")
    if str(run.status) != "succeeded":
        fail(f"the run {run.status}: {run.error}; see {worker.log}")
    return str(run.id)


def download_model(client: Client, run_id: str, out_dir: Path) -> Path:
    """The run's model downloaded and extracted into ``out_dir``; the archive deleted once extracted."""
    say("\n4. the trained model")
    download = client.runs.download(run_id, out_dir)
    if download.directory is None:
        fail(f"the model archive {download.archive} was not extracted")
    size = download.archive.stat().st_size
    download.archive.unlink()
    checked = "sha256 checked" if download.verified else "the server had no sha256 yet"
    say(f"  downloaded {megabytes(size)} ({checked}), extracted to {download.directory}; the .tar deleted")
    return download.directory


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


# -- the closing lines -------------------------------------------------------------------------------------


def closing_lines(outcome: Outcome, paths: DemoPaths, running: list[int] | None) -> list[str]:
    """What ran and where, the run's files, the next steps, the disk. ``running``: the pids left running
    (``--keep-running``), None when the demo stopped everything it started."""
    url = outcome.base_url
    if running is None:
        lines = ["", "the service (stopped with the demo; make demo DEMO_ARGS=--keep-running leaves it up)"]
    else:
        lines = ["", f"the service, still running (stop it with: kill {' '.join(map(str, running))})"]
    lines.append(f"  API               {url}  (log {log_file(paths.logs, 'api')})")
    if outcome.pages.get("/docs"):
        lines.append(f"  API docs          {url}/docs")
    if outcome.pages.get("/ui/"):
        lines.append(f"  dashboard         {url}/ui/  (sign in with the API key)")
    lines += [
        f"  worker            queue {QUEUE!r}  (log {log_file(paths.logs, 'worker')})",
        f"  Redis             {outcome.redis_url}",
        f"  database          {paths.database} (SQLite)",
    ]
    if running is not None:
        lines += [
            f"  API key           {outcome.key}",
            f"  for the client    export BERTPT_API_URL={url} BERTPT_API_KEY={outcome.key}",
        ]

    run = paths.run(outcome.run_id)
    lines += [
        "",
        f"the run's files: {run.root}",
        f"  TensorBoard       .venv/bin/tensorboard --logdir {run.tensorboard}",
        f"  {run.metrics.name:<17} {run.metrics}  (every record, one JSON object a line)",
        f"  model             {run.model}",
        f"  downloaded model  {outcome.model_dir}  (from_pretrained)",
    ]

    lines += [
        "",
        "next steps (`source .venv/bin/activate` puts the bertpt command on PATH)",
        "  your own corpus   one sentence per line, a blank line between documents (README: corpus format)",
        "  a key of your own bertpt admin create-tenant NAME; bertpt admin create-key --tenant NAME",
        f"                    (BERTPT_DATABASE_URL=sqlite:///{paths.database}: the demo's database)",
        f"  the client        bertpt login --api-url {url}  (asks for the key; keeps both in a 0600 file)",
        "                    bertpt corpora upload my-corpus.txt  (prints the corpus id)",
        f"                    bertpt runs create --base {BASE_MODEL} --corpus CORPUS_ID --max-steps 1000 \\",
        "                      --follow",
        "",
    ]
    return lines + disk_report(paths, outcome.run_id, outcome.model_dir)


if __name__ == "__main__":
    main()
