"""All tables. Importing this package registers every model on ``Base.metadata`` (Alembic relies on it)."""

from app.models.base import Base, utcnow
from app.models.checkpoint import Checkpoint
from app.models.corpus import Corpus
from app.models.run import (
    ACTIVE_RUN_STATUSES,
    TERMINAL_RUN_STATUSES,
    Run,
    RunCheckpoint,
    RunEvent,
    RunMetric,
    RunStatus,
)
from app.models.tenant import ApiKey, Tenant

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "TERMINAL_RUN_STATUSES",
    "ApiKey",
    "Base",
    "Checkpoint",
    "Corpus",
    "Run",
    "RunCheckpoint",
    "RunEvent",
    "RunMetric",
    "RunStatus",
    "Tenant",
    "utcnow",
]
