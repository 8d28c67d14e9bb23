"""API schemas of base models (what a run may start from)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.checkpoints.schemas import CheckpointConfig

BaseModelKind = Literal["builtin", "hf", "checkpoint", "run"]


class BaseModelPublic(BaseModel):
    id: str = Field(
        description="The value to pass as a run's base_model; for kind hf a pattern, hf:<repo_id>.",
        examples=["minilm-l6-h384-uncased", "checkpoint:ckpt_4fHq1sZt0yP8wXbN2cVmK9aR", "hf:<repo_id>"],
    )
    kind: BaseModelKind
    name: str
    description: str | None = None
    available: bool = Field(description="Whether a run can start from it now.")
    config: CheckpointConfig | None = None
    has_pretraining_heads: bool | None = None
    parameters: int | None = None
    created_at: datetime | None = None
    steps: list[int] = Field(
        default_factory=list,
        description="For runs: steps of the kept intermediate checkpoints, usable as run:<id>@<step>.",
    )


class BaseModelsPublic(BaseModel):
    data: list[BaseModelPublic]
