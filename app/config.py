"""Service settings: one pydantic-settings class read from ``BERTPT_*`` environment variables.

Nothing is read at import: call :func:`get_settings` (cached) or build ``Settings(...)`` explicitly (tests,
scripts). The defaults suit a laptop demo (SQLite, a local storage directory, CORS open); ``ENV=prod``
refuses the ones that are unsafe for a shared deployment.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["RESOURCE_CLASSES", "ResourceClass", "Settings", "get_settings"]

GiB = 1 << 30
# What a run may ask for (``resources.class``): each class has a training queue of its own, served by the
# workers that have such resources (Settings.training_queue_for).
ResourceClass = Literal["cpu", "gpu"]
RESOURCE_CLASSES: tuple[ResourceClass, ...] = ("cpu", "gpu")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BERTPT_", populate_by_name=True, extra="ignore")

    env: Literal["dev", "test", "prod"] = Field(default="dev", description="prod refuses unsafe defaults.")
    database_url: str = Field(
        default="sqlite:///./var/bertpt.db",
        description="SQLAlchemy URL; PostgreSQL (postgresql+psycopg://...) in tests and production.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Celery broker and live metric streams."
    )
    storage_url: str = Field(
        default="file://./var/storage",
        description="Artifact storage: a local directory (file:///srv/bertpt/storage) or an S3-compatible "
        "bucket (s3://<bucket>[/<prefix>]; endpoint, credentials and region from the usual AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION).",
    )
    storage_cache_dir: str = Field(
        default="./var/cache",
        description="With S3 storage, this process's local cache: fetched inputs and base models (kept by "
        "storage key and ETag), the directories of the runs a worker trains, prepared data, uploads in "
        "progress. Unused with file:// storage.",
    )
    storage_part_bytes: int = Field(
        default=16 << 20,
        ge=5 << 20,
        description="With S3 storage, the part size of multipart uploads (bytes; S3's minimum is 5 MiB): "
        "an upload holds one part in memory.",
    )
    max_upload_bytes: int = Field(
        default=2 * GiB, gt=0, description="Cap on one corpus or checkpoint upload."
    )
    max_dataset_bytes: int = Field(
        default=32 << 20,
        gt=0,
        description="Cap on one labelled dataset upload (its training and test files together). The API "
        "reads a dataset into memory to validate it; fine-tuning sets are small (SST-2's training file is "
        "5 MB).",
    )
    max_checkpoint_members: int = Field(
        default=64, gt=0, description="Archive members accepted in a checkpoint."
    )
    max_checkpoint_unpacked_bytes: int = Field(
        default=8 * GiB,
        gt=0,
        description="Cap on the total uncompressed size of a checkpoint archive (guards against archive "
        "bombs; safetensors barely compress, so this is far above any honest archive's ratio).",
    )
    max_decompressed_bytes: int = Field(
        default=8 * GiB,
        gt=0,
        description="Cap on the text of one corpus once decompressed (a .txt.gz inflated; a .txt counts as "
        "it is), checked while it inflates. gzip compresses text about 4 times: a .txt.gz as large as "
        "MAX_UPLOAD_BYTES allows fits.",
    )
    max_compression_ratio: float = Field(
        default=100.0,
        gt=1,
        description="Cap on the bytes an upload (corpus .txt.gz, checkpoint .tar.gz or .zip) decompresses to "
        "per compressed byte read, checked while it inflates, past its first MiB: text compresses 3 to 10 "
        "times and weights hardly at all, while a gzip bomb (a megabyte of gzip holding a gigabyte of "
        "newlines) is about 1,000; it is refused after a few megabytes of work.",
    )
    max_concurrent_uploads: int | None = Field(
        default=None,
        ge=1,
        description="Uploads one API process handles at once; more are answered 429 with Retry-After. Fewer "
        "than API_THREADS, so that uploads never hold every thread. Default: half of API_THREADS (at "
        "least 1).",
    )
    stale_upload_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A temporary upload file (in the storage's .tmp) that nothing has written to for this "
        "long was left by a process that died, and is removed: at the API's start and by the periodic "
        "sweep. Younger ones belong to uploads in progress.",
    )
    shutdown_grace_seconds: int = Field(
        default=20,
        ge=0,
        description="On SIGTERM, how long an API process lets the requests in flight finish before it "
        "cancels them and stops uploads still running (a few seconds more); the process then exits.",
    )
    hf_hub_offline: bool = Field(
        default=False,
        # The variable Hugging Face's own libraries read, so one switch turns the whole deployment offline.
        validation_alias=AliasChoices("BERTPT_HF_HUB_OFFLINE", "HF_HUB_OFFLINE"),
        description="Workers cannot reach the Hugging Face hub: hf: base models are unavailable.",
    )
    training_queue: str = Field(
        default="training",
        min_length=1,
        description="Celery queue of evaluations and analyses (by default), and the prefix of the queues of "
        "training tasks: one per resource class, <it>.cpu and <it>.gpu (a run's `resources.class`).",
    )
    default_resource_class: ResourceClass = Field(
        default="cpu",
        description="The resource class of a run whose body names none: its task goes to "
        "TRAINING_QUEUE.<it>, which `bertpt worker` consumes by default (`--gpus`: the gpu class's).",
    )
    evaluation_queue: str | None = Field(
        default=None,
        min_length=1,
        description="Celery queue of evaluation tasks (downstream comparisons fine-tune models: they need "
        "the same machines as training). Default: TRAINING_QUEUE. `bertpt worker` consumes both.",
    )
    analysis_queue: str | None = Field(
        default=None,
        min_length=1,
        description="Celery queue of corpus analyses (POST /v1/corpora/{id}/analyze: tokenizing and "
        "preparing the data, no GPU). Default: TRAINING_QUEUE. Another one lets a CPU worker (`bertpt worker "
        "--queue <it>`) analyse while the training workers train. `bertpt worker` consumes it too.",
    )
    visibility_timeout: int = Field(
        default=43200,
        gt=0,
        description="Seconds before Redis redelivers an unacknowledged task; longer than any training run "
        "(tasks are acknowledged late, at their end).",
    )
    worker_concurrency: int = Field(default=1, ge=1, description="Trainings per worker process.")
    requeue_after_seconds: int = Field(
        default=600,
        ge=0,
        description="Workers send the task of a run still queued this long after its last send again (a "
        "send that failed, a lost message; a duplicate does nothing). 0: never.",
    )
    heartbeat_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        description="A worker holding a run refreshes its heartbeat about once a second; a run whose "
        "heartbeat is older than this is taken back by the reaper (its worker died or lost the database): "
        "queued again to resume from its newest checkpoint while attempts are left, else failed; a run in "
        "cancelling is cancelled. The API and every worker reap, every quarter of this (at most a minute).",
    )
    housekeeping: bool = Field(
        default=True,
        description="Run the housekeeping thread (the reaper of runs whose worker stopped answering, the "
        "sweeps of runs left queued and of abandoned upload files) in this process; API processes and "
        "workers all run it by default (it is safe to run many).",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Attempts a run gets when they are interrupted by something that is not its owner's "
        "doing (the training process killed, out of memory, the worker lost); each resumes from the newest "
        "complete checkpoint. A resume by the owner (POST /v1/runs/{id}/resume) grants this many again.",
    )
    api_threads: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Worker threads per API process for blocking work (database queries, file I/O). Up to "
        "twice as many requests hold a database session at once, and the process's pool keeps that many "
        "connections plus 8. Few threads beat many: Python runs one at a time, so more only queue on the "
        "interpreter and on PostgreSQL's max_connections.",
    )
    auth_cache_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long an API process remembers a key it accepted (no database lookup per request); "
        "a revoked key keeps working that long. 0: look the key up on every request.",
    )
    public_url: str | None = Field(
        default=None,
        description="The API's address as its users reach it (https://bertpt.example.com): the links of "
        "webhook events are made absolute with it; without it they are paths (/v1/runs/...).",
    )
    webhook_dispatch: bool = Field(
        default=True,
        description="Deliver webhook events from this worker process (a dispatcher thread polling the "
        "outbox; several workers share it safely).",
    )
    webhook_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the dispatcher looks for webhook events due."
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long a webhook endpoint has to answer a delivery."
    )
    webhook_max_attempts: int = Field(
        default=12,
        ge=1,
        description="Attempts at delivering one event (an answer other than 2xx, a connection error or a "
        "timeout fails one) before it is given up, marked failed in the delivery log.",
    )
    webhook_retry_seconds: float = Field(
        default=30.0,
        gt=0,
        description="The wait before the first retry of a webhook delivery; it doubles at every retry, up "
        "to WEBHOOK_MAX_RETRY_SECONDS (defaults: 30 s, 1, 2, 4... min, then hourly: 12 attempts span about "
        "5 hours).",
    )
    webhook_max_retry_seconds: float = Field(
        default=3600.0, gt=0, description="The longest wait between two attempts of a webhook delivery."
    )
    webhook_allow_private: bool | None = Field(
        default=None,
        description="Deliver webhooks to addresses that are not public: loopback, private (RFC 1918, IPv6 "
        "unique-local), link-local (169.254.0.0/16, where clouds serve instance metadata and credentials), "
        "unspecified, multicast and reserved ones. Checked against the address the URL's host resolves to "
        "when each delivery is sent (and that address is the one connected to). Default: only with ENV=dev "
        "or test (a receiver on the same machine); otherwise refused, so that a tenant cannot make the "
        "workers POST into the service's own network.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Origins allowed by CORS (comma-separated in the environment); '*' only outside prod.",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str) -> str:
        if value.startswith("s3://"):
            from app.storage.urls import parse_s3_url

            parse_s3_url(value)
        elif not value.startswith("file://"):
            raise ValueError(
                "STORAGE_URL must be a file:// or s3:// URL (file:///srv/bertpt/storage, s3://bucket/prefix)"
            )
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_production_defaults(self) -> Settings:
        if self.env != "prod":
            return self
        problems = []
        if self.database_url.startswith("sqlite"):
            problems.append("DATABASE_URL is SQLite; use PostgreSQL (postgresql+psycopg://...)")
        if "*" in self.cors_origins:
            problems.append("CORS_ORIGINS allows '*'; list the origins of your front ends (or none)")
        if problems:
            raise ValueError("unsafe settings for ENV=prod: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _leave_threads_to_other_requests(self) -> Settings:
        uploads = self.max_concurrent_uploads
        if uploads is not None and self.api_threads > 1 and uploads >= self.api_threads:
            raise ValueError(
                f"MAX_CONCURRENT_UPLOADS ({uploads}) must be below API_THREADS ({self.api_threads}), so that "
                "uploads never hold every thread of the API"
            )
        return self

    def concurrent_uploads(self) -> int:
        """``MAX_CONCURRENT_UPLOADS``, or its default: half of ``API_THREADS``, at least 1."""
        return self.max_concurrent_uploads or max(1, self.api_threads // 2)

    def webhooks_may_reach_private(self) -> bool:
        """``WEBHOOK_ALLOW_PRIVATE``, or its default: true with ENV=dev or test, false with ENV=prod."""
        if self.webhook_allow_private is not None:
            return self.webhook_allow_private
        return self.env in ("dev", "test")

    def training_queue_for(self, resource_class: ResourceClass) -> str:
        """The queue of the training tasks of ``resource_class``: ``TRAINING_QUEUE.<class>``."""
        return f"{self.training_queue}.{resource_class}"

    def training_queues(self) -> list[str]:
        """The queues of training tasks, one per resource class."""
        return [self.training_queue_for(resource_class) for resource_class in RESOURCE_CLASSES]

    def evaluation_queue_name(self) -> str:
        """``EVALUATION_QUEUE``, or its default: ``TRAINING_QUEUE``."""
        return self.evaluation_queue or self.training_queue

    def analysis_queue_name(self) -> str:
        """``ANALYSIS_QUEUE``, or its default: ``TRAINING_QUEUE``."""
        return self.analysis_queue or self.training_queue


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
