"""corpus_analyses: a corpus seen through a model's tokenizer with a run's preparation settings (instances,
tokens, [UNK] rate, warnings), computed by a worker and kept per (corpus, tokenizer, settings).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

Types are spelled out here (not imported from app.models) so that this revision stays what it was when
the models change.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
ANALYSIS_STATUSES = ("queued", "running", "succeeded", "failed")


def timestamp(name: str, *, nullable: bool = False) -> sa.Column[sa.DateTime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "corpus_analyses",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("corpus_id", sa.String(40), nullable=False),
        sa.Column("base_model", sa.String(300), nullable=False),
        sa.Column("tokenizer_key", sa.String(64), nullable=False),
        sa.Column("settings_key", sa.String(64), nullable=False),
        sa.Column("hyperparameters", JSON, nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                *ANALYSIS_STATUSES,
                name="analysis_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("result", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        timestamp("created_at"),
        timestamp("sent_at"),
        timestamp("started_at", nullable=True),
        timestamp("heartbeat_at", nullable=True),
        timestamp("finished_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_corpus_analyses_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["corpus_id"],
            ["corpora.id"],
            name=op.f("fk_corpus_analyses_corpus_id_corpora"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_corpus_analyses")),
        # The cache key; its leading column also serves the corpus's foreign key.
        sa.UniqueConstraint(
            "corpus_id",
            "tokenizer_key",
            "settings_key",
            name=op.f("uq_corpus_analyses_corpus_id_tokenizer_key_settings_key"),
        ),
    )


def downgrade() -> None:
    op.drop_table("corpus_analyses")
