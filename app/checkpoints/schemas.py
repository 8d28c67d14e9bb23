"""API schemas of uploaded checkpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from worker.pretraining.records import RunWarning


class CheckpointConfig(BaseModel):
    """A summary of the checkpoint's config.json."""

    model_type: str = Field(examples=["bert"])
    hidden_size: int | None
    layers: int | None = Field(description="num_hidden_layers")
    heads: int | None = Field(description="num_attention_heads")
    vocab_size: int | None
    max_position_embeddings: int | None
    architectures: list[str] = Field(examples=[["BertForPreTraining"]])


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["ckpt_4fHq1sZt0yP8wXbN2cVmK9aR"])
    name: str
    config: CheckpointConfig
    has_pretraining_heads: bool = Field(
        description="The weights hold BertForPreTraining's MLM and NSP heads; otherwise training starts "
        "them from random values."
    )
    parameters: int = Field(description="Number of parameters in the weights.")
    bytes: int = Field(description="Size of the stored checkpoint files.")
    sha256: str = Field(description="Digest of the archive as uploaded.")
    created_at: datetime


class CheckpointUploadPublic(CheckpointPublic):
    """The answer to an upload: the checkpoint, and what the upload did not keep."""

    warnings: list[RunWarning] = Field(
        default_factory=list,
        description="Only in the upload's answer. `training_state_left_out`: the archive held the training "
        "state of a bertpt checkpoint (a download with include_optimizer), which was not kept: a run from "
        "this checkpoint starts with its weights and a new optimizer.",
    )


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]
    next_cursor: str | None = Field(description="Pass as `after` for the next page; null on the last one.")
