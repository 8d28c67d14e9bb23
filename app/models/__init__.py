"""All tables. Importing this package registers every model on ``Base.metadata`` (Alembic relies on it)."""

from app.models.analysis import Analysis, AnalysisStatus
from app.models.base import Base, utcnow
from app.models.checkpoint import Checkpoint
from app.models.corpus import Corpus
from app.models.dataset import Dataset
from app.models.evaluation import Evaluation
from app.models.run import Run, RunCheckpoint, RunEvent, RunMetric
from app.models.tenant import ApiKey, Tenant
from app.models.webhook import DeliveryOutcome, MessageStatus, Webhook, WebhookDelivery, WebhookMessage

__all__ = [
    "Analysis",
    "AnalysisStatus",
    "ApiKey",
    "Base",
    "Checkpoint",
    "Corpus",
    "Dataset",
    "DeliveryOutcome",
    "Evaluation",
    "MessageStatus",
    "Run",
    "RunCheckpoint",
    "RunEvent",
    "RunMetric",
    "Tenant",
    "Webhook",
    "WebhookDelivery",
    "WebhookMessage",
    "utcnow",
]
