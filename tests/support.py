"""What several test modules build with: plain functions and constants (fixtures live in the conftest.py
files). Nothing here touches a service unless handed a session or a client."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import random
import re
import secrets
import shutil
import socket
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from fastapi.testclient import TestClient
from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from app.db import session_scope
from app.ids import new_id
from app.models import Checkpoint, Corpus, Run, RunCheckpoint, RunMetric, Tenant
from app.runs.downsample import Point
from app.runs.live import stream_key
from app.runs.states import RunStatus
from app.storage import LocalStorage
from app.storage.keys import checkpoint_key, corpus_key, run_checkpoint_key
from worker.pretraining.hyperparameters import Hyperparameters
from worker.pretraining.layout import CHECKPOINT_MANIFEST, TRAINER_STATE
from worker.pretraining.model_files import inspect_model_dir

REPO_ROOT = Path(__file__).resolve().parents[1]

POSTGRES_URL = os.environ.get(
    "BERTPT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BERTPT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# A run of a few steps of the tiny BERT: seconds on a CPU.
TINY_HYPERPARAMETERS: dict[str, Any] = {
    "max_steps": 6,
    "batch_size": 8,
    "max_seq_length": 64,
    "max_predictions_per_seq": 10,
    "learning_rate": 1e-3,
    "logging_every_steps": 1,
    "eval_every_steps": 0,
    "checkpoint_every_steps": 0,
    "eval_documents": 6,
    "seed": 3,
}

# -- tiny BERTs ------------------------------------------------------------------------------------------

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
}


def tiny_config(tokenizer: Any, **overrides: Any) -> Any:
    from transformers import BertConfig

    values: dict[str, Any] = {**TINY, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    values.update(overrides)
    return BertConfig(**values)


def wordpiece_tokenizer(vocabulary: Iterable[str], *, lowercase: bool = True, prefix: str = "##") -> Any:
    """A BertTokenizerFast over ``vocabulary`` (duplicates dropped, ids in order), uncased or cased
    (accents kept), with ``prefix`` marking word continuations. Not ``BertTokenizerFast(vocab_file=...)``:
    transformers 5 builds a 5-token vocabulary from it."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(
        {token: i for i, token in enumerate(dict.fromkeys(vocabulary))},
        lowercase=lowercase,
        strip_accents=False if not lowercase else None,
        wordpieces_prefix=prefix,
    )
    return BertTokenizerFast(
        tokenizer_object=wordpiece._tokenizer,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        do_lower_case=lowercase,
    )


def save_checkpoint(model: Any, tokenizer: Any, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# -- runs of the training library ------------------------------------------------------------------------

# A run of the engine on the tiny BERT: every step logged, evaluations and checkpoints every 10 steps.
TINY_RUN: dict[str, Any] = {
    "batch_size": 8,
    "max_seq_length": 64,
    "max_predictions_per_seq": 10,
    "learning_rate": 1e-3,
    "warmup_ratio": 0.1,
    "logging_every_steps": 1,
    "eval_every_steps": 10,
    "checkpoint_every_steps": 10,
    "keep_checkpoints": 2,
    "eval_documents": 6,
    "seed": 7,
}


def tiny_run_hyperparameters(**overrides: Any) -> Hyperparameters:
    """:data:`TINY_RUN` with ``overrides``."""
    return Hyperparameters(**{**TINY_RUN, **overrides})


def nan_loss_on(batches: Callable[[int], bool]) -> Callable[..., Any]:
    """A stand-in for ``worker.pretraining.trainer.pretraining_loss``: the real loss, except that on the
    training batches ``n`` (1-based, counted in this process) where ``batches(n)`` holds, its loss terms
    are NaN as in a diverging run, and so are the gradients that follow from it."""
    import torch

    from worker.pretraining.loss import pretraining_loss

    seen = 0

    def loss(model: Any, batch: Any, **kwargs: Any) -> Any:
        nonlocal seen
        out = pretraining_loss(model, batch, **kwargs)
        if not model.training:
            return out
        seen += 1
        if not batches(seen):
            return out
        nan = torch.tensor(float("nan"))
        return dataclasses.replace(
            out,
            loss=out.loss * nan,
            masked_lm_loss=out.masked_lm_loss * nan,
            masked_lm_loss_sum=out.masked_lm_loss_sum * nan,
        )

    return loss


def write_documents(path: Path, documents: list[list[str]]) -> Path:
    """A corpus file in BERT format: one sentence a line, a blank line after each document."""
    path.write_text("".join("\n".join(doc) + "\n\n" for doc in documents), encoding="utf-8")
    return path


def topic_dataset_tsv(documents: Iterable[Iterable[str]], per_label: int = 30) -> bytes:
    """A labelled dataset (TSV with a header: ``text``, ``label``) made from the synthetic corpus
    (:mod:`tests.synthetic`): which of two documents a sentence comes from, ``per_label`` sentences of
    each of the first two documents that have that many. Each document keeps to its own dozen topic words,
    so the label can be learnt from the words; the tiny BERTs' tokenizer knows every one."""
    long_enough = [list(document) for document in documents if len(list(document)) >= per_label][:2]
    assert len(long_enough) == 2, "the corpus has no two documents that long"
    rows = [
        f"{sentence}\t{label}\n"
        for label, document in zip(("first", "second"), long_enough, strict=True)
        for sentence in document[:per_label]
    ]
    return ("text\tlabel\n" + "".join(rows)).encode()


# -- the API -------------------------------------------------------------------------------------------


@dataclass
class TenantKey:
    tenant: Tenant
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def assert_error(response: Any, status: int, error_type: str, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message", "param"}
    assert body["error"]["type"] == error_type
    assert body["error"]["message"]
    assert body["error"]["param"] == param
    return body["error"]


def corpus_bytes(documents: int = 3, sentences: int = 3, *, tag: str = "") -> bytes:
    """A valid corpus: ``documents`` documents of ``sentences`` distinct sentences each."""
    docs = [
        "\n".join(f"Document {d}{tag} says thing number {s} about enzymes." for s in range(sentences))
        for d in range(documents)
    ]
    return ("\n\n".join(docs) + "\n").encode()


def upload_corpus(
    client: TestClient, who: TenantKey, content: bytes, filename: str = "corpus.txt", name: str | None = None
) -> Any:
    data = {"name": name} if name is not None else None
    return client.post("/v1/corpora", files={"file": (filename, content)}, data=data, headers=who.headers)


def make_run(session: Session, tenant: Tenant, **values: Any) -> Run:
    """A run row inserted directly (the run routes are not needed to test what depends on runs)."""
    run = Run(
        id=values.pop("id", f"run_{secrets.token_urlsafe(18)}"),
        tenant_id=tenant.id,
        name=values.pop("name", "a run"),
        status=values.pop("status", RunStatus.QUEUED),
        base_model=values.pop("base_model", "minilm-l6-h384-uncased"),
        hyperparameters=values.pop("hyperparameters", {}),
        **values,
    )
    session.add(run)
    session.commit()
    return run


def write_directory(storage: LocalStorage, key: str, files: dict[str, bytes]) -> Path:
    """The folder ``key`` in storage with these files (name -> content), written directly."""
    directory = storage.local_path(key)
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return directory


def write_complete_checkpoint(storage: LocalStorage, run_id: str, step: int) -> Path:
    """The files that make a run's checkpoint complete on disk (its manifest and trainer state), as the
    library publishes them, beside what the directory holds already (no weights of its own)."""
    directory = storage.local_path(run_checkpoint_key(run_id, step))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CHECKPOINT_MANIFEST).write_text(json.dumps({"step": step}))
    (directory / TRAINER_STATE).write_text(json.dumps({"global_step": step}))
    return directory


def add_checkpoint_row(session: Session, run: Run, step: int, key: str | None = None) -> RunCheckpoint:
    checkpoint = RunCheckpoint(
        run_id=run.id,
        step=step,
        metrics={"eval": {"loss": 2.5}},
        size_bytes=123,
        sha256="ab" * 32,
        storage_key=key or run_checkpoint_key(run.id, step),
    )
    session.add(checkpoint)
    session.commit()
    return checkpoint


class LiveStreams:
    """Publishes to runs' Redis streams as the worker does (XADD of a type and JSON data); :meth:`close`
    removes the streams it wrote to and closes its connection."""

    def __init__(self) -> None:
        self.client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        self.keys: set[str] = set()

    def publish(self, run_id: str, kind: str, data: dict[str, Any]) -> str:
        key = stream_key(run_id)
        self.keys.add(key)
        return str(self.client.xadd(key, {"type": kind, "data": json.dumps(data)}))

    def close(self) -> None:
        if self.keys:
            self.client.delete(*self.keys)
        self.client.close()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listened on a moment ago, for a server started as another
    process (one that can be handed a bound socket should bind port 0 itself and hold it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- metric curves ---------------------------------------------------------------------------------------


def noisy_points(steps: Iterable[int], seed: int = 0) -> list[Point]:
    """A curve with a value between 3 and 4 at each of ``steps``, the same for the same ``seed``."""
    rng = random.Random(seed)
    return [(step, 3.0 + rng.random()) for step in steps]


def assert_well_formed_points(points: list[Point], max_points: int) -> None:
    """At most ``max_points`` points, in increasing steps, each step once."""
    assert len(points) <= max_points
    steps = [step for step, _ in points]
    assert steps == sorted(set(steps))


def insert_metric_points(
    session: Session, run_id: str, split: str, name: str, points: Iterable[Point]
) -> None:
    """The ``points`` of one series of a run, written to ``run_metrics`` and committed."""
    rows = [{"run_id": run_id, "split": split, "name": name, "step": s, "value": v} for s, v in points]
    session.execute(insert(RunMetric), rows)
    session.commit()


# -- archives and checkpoint files ---------------------------------------------------------------------


def tar_gz(files: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A .tar.gz of ``files`` (member name -> content), plus raw ``extra`` members (links...)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra or []:
            tar.addfile(info)
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0x20
            zf.writestr(info, target)
    return buffer.getvalue()


def with_one_bad_weight(
    directory: Path, target: Path, tensor: str = "bert.encoder.layer.1.output.dense.weight"
) -> Path:
    """A copy of the checkpoint ``directory`` at ``target`` with one NaN in ``tensor`` (as a diverged run
    leaves it)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(directory, target)
    weights = load_file(target / "model.safetensors")
    weights[tensor].view(-1)[5] = float("nan")
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def directory_files(directory: Path, *, folder: str | None = None) -> dict[str, bytes]:
    """The files of a directory as archive members, at the top level or under ``folder/``."""
    prefix = f"{folder}/" if folder else ""
    return {prefix + path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def gzip_bytes(content: bytes) -> bytes:
    return gzip.compress(content, mtime=0)


def gzip_bomb(size: int = 16 << 20) -> bytes:
    """``size`` newlines, gzipped about 230 to 1 (a tester's 1 MB .txt.gz held 1 GiB of them): built in
    milliseconds, refused by the ratio cap after one piece of output."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    return packer.compress(b"\n" * size) + packer.flush()


def safetensors_bytes(shapes: dict[str, tuple[int, ...]], *, dtype: str = "F32") -> bytes:
    """A well-formed safetensors file of zero tensors with these names and shapes (no torch needed)."""
    import json
    import math
    import struct

    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 4
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def fake_bert_files(
    *, vocab_size: int = 10, heads: bool = True, model_type: str = "bert", positions: int = 16
) -> dict[str, bytes]:
    """The files of a minimal BERT checkpoint directory with made-up weights (``positions`` position
    embeddings: 512 takes every run's default max_seq_length)."""
    import json

    prefix = "bert." if heads else ""
    shapes: dict[str, tuple[int, ...]] = {
        f"{prefix}embeddings.word_embeddings.weight": (vocab_size, 4),
        f"{prefix}encoder.layer.0.attention.self.query.weight": (4, 4),
    }
    if heads:
        shapes |= {
            "cls.predictions.transform.dense.weight": (4, 4),
            "cls.predictions.bias": (vocab_size,),
            "cls.seq_relationship.weight": (2, 4),
        }
    config = {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": 4,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "max_position_embeddings": positions,
        "architectures": ["BertForPreTraining"],
    }
    vocab = "\n".join(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab_size - 5)]
    )
    return {
        "config.json": json.dumps(config).encode(),
        "model.safetensors": safetensors_bytes(shapes),
        "vocab.txt": vocab.encode(),
        "tokenizer_config.json": b'{"do_lower_case": true}',
    }


# -- committed rows, for what opens its own sessions (the worker, the run lifecycle) -----------------------


class Factory:
    """Committed rows for one test, all under one new tenant."""

    def __init__(
        self, session_factory: Callable[[], Session], storage: LocalStorage, redis_client: redis.Redis
    ):
        self.session_factory = session_factory
        self.storage = storage
        self.redis = redis_client
        self.run_ids: list[str] = []
        with session_scope(session_factory) as session:
            tenant = Tenant(id=new_id("ten"), name=f"worker-test-{secrets.token_hex(6)}")
            session.add(tenant)
        self.tenant_id = tenant.id

    def corpus(self, content: bytes) -> str:
        corpus_id = new_id("corp")
        key = corpus_key(corpus_id, gzip=False)
        with self.storage.open_write(key) as pending:
            pending.write(content)
            pending.commit()
        with session_scope(self.session_factory) as session:
            session.add(
                Corpus(
                    id=corpus_id,
                    tenant_id=self.tenant_id,
                    name="corpus",
                    filename="corpus.txt",
                    storage_key=key,
                    bytes=len(content),
                    sha256=hashlib.sha256(content).hexdigest(),
                    documents=0,
                    sentences=0,
                    stats={},
                    warnings=[],
                )
            )
        return corpus_id

    def checkpoint(self, directory: Path) -> str:
        """An uploaded checkpoint (``checkpoint:<id>``) holding the files of ``directory``."""
        checkpoint_id = new_id("ckpt")
        key = checkpoint_key(checkpoint_id)
        with self.storage.open_tree(key) as tree:
            for file in directory.iterdir():
                shutil.copy(file, tree.path / file.name)
            summary = inspect_model_dir(tree.path)
            tree.commit()
        with session_scope(self.session_factory) as session:
            session.add(
                Checkpoint(
                    id=checkpoint_id,
                    tenant_id=self.tenant_id,
                    name="tiny",
                    storage_key=key,
                    config=summary.config_summary,
                    has_pretraining_heads=summary.has_pretraining_heads,
                    parameters=summary.parameters,
                    bytes=self.storage.size(key),
                    sha256="0" * 64,
                )
            )
        return checkpoint_id

    def run(self, *, corpus_id: str, base_model: str, **values: Any) -> str:
        run_id = new_id("run")
        with session_scope(self.session_factory) as session:
            session.add(
                Run(
                    id=run_id,
                    tenant_id=self.tenant_id,
                    name="a run",
                    base_model=base_model,
                    corpus_id=corpus_id,
                    status=values.pop("status", RunStatus.QUEUED),
                    hyperparameters=values.pop("hyperparameters", TINY_HYPERPARAMETERS),
                    **values,
                )
            )
        self.run_ids.append(run_id)
        return run_id

    def get_run(self, run_id: str) -> Run:
        with self.session_factory() as session:
            run = session.get(Run, run_id)
            assert run is not None
            return run

    def delete_rows(self) -> None:
        """Every row made under the tenant, and the tenant (a run's metrics, events and checkpoint rows go
        with it): tests that count all the rows of a table (runs, corpora, checkpoints) must not see them."""
        with session_scope(self.session_factory) as session:
            for model in (Run, Corpus, Checkpoint):
                session.execute(delete(model).where(model.tenant_id == self.tenant_id))
            session.execute(delete(Tenant).where(Tenant.id == self.tenant_id))


# -- the README's examples: a user copies them, so tests run them as written ------------------------------


def readme_corpus_example() -> bytes:
    """The corpus of the README's "The corpus format" (its first ``text`` block)."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The corpus format") :]
    match = re.search(r"```text\n(.*?)```", section, re.DOTALL)
    assert match, "README.md: no ```text block under 'The corpus format'"
    return match.group(1).encode()


def readme_run_example() -> dict[str, Any]:
    """The body of the README's ``POST /v1/runs`` example (``corpus_id`` left as written)."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"-d '(\{\"base_model\".*?)'", readme)
    assert match, "README.md: no run example (-d '{\"base_model\": ...}')"
    body: dict[str, Any] = json.loads(match.group(1))
    return body
