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

__all__ = ["Settings", "get_settings"]

GiB = 1 << 30


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
        default="file://./var/storage", description="Artifact storage root (file:// only for now; S3 later)."
    )
    max_upload_bytes: int = Field(
        default=2 * GiB, gt=0, description="Cap on one corpus or checkpoint upload."
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
    hf_hub_offline: bool = Field(
        default=False,
        # The variable Hugging Face's own libraries read, so one switch turns the whole deployment offline.
        validation_alias=AliasChoices("BERTPT_HF_HUB_OFFLINE", "HF_HUB_OFFLINE"),
        description="Workers cannot reach the Hugging Face hub: hf: base models are unavailable.",
    )
    training_queue: str = Field(
        default="training", min_length=1, description="Celery queue of training tasks."
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
        if not value.startswith("file://"):
            raise ValueError("only file:// storage URLs are supported (e.g. file:///srv/bertpt/storage)")
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
