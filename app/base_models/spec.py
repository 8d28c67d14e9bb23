"""Base-model specs: the value of a run's ``base_model``, parsed and formatted in one place.

    minilm-l6-h384-uncased      a built-in model (a checkpoint shipped as a Python package)
    hf:<repo_id>                a Hugging Face hub repository (``name`` or ``owner/name``)
    checkpoint:<id>             a checkpoint the tenant uploaded
    run:<id>                    the final model of one of the tenant's succeeded runs
    run:<id>@<step>             one of its kept intermediate checkpoints

Parsing checks the form only; :func:`app.base_models.service.resolve_base_model` checks that the spec
names something the tenant can use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from worker.pretraining.model_files import HUB_ID

__all__ = ["SPEC_FORMS", "BaseModelKind", "BaseModelSpec", "BaseModelSpecError"]

BaseModelKind = Literal["builtin", "hf", "checkpoint", "run"]
SPEC_FORMS = "hf:<repo_id>, checkpoint:<id>, run:<id> or run:<id>@<step>"
_ID = re.compile(r"^[A-Za-z0-9_\-]{1,40}$")  # app.ids: <prefix>_<url-safe characters>
_RUN = re.compile(r"^(?P<run_id>[^@\s]+)(?:@(?P<step>\d{1,12}))?$")
_STEP = "@"


class BaseModelSpecError(ValueError):
    """Not a base-model spec; the message says which form was expected."""


@dataclass(frozen=True)
class BaseModelSpec:
    kind: BaseModelKind
    name: str  # the built-in's name, the hub repository id, the checkpoint id or the run id
    step: int | None = None  # run:<id>@<step>

    @classmethod
    def parse(cls, text: str) -> BaseModelSpec:
        """``text`` (surrounding whitespace ignored) as a spec; BaseModelSpecError if it has no valid form."""
        text = text.strip()
        kind, colon, value = text.partition(":")
        if not colon:
            if not text:
                raise BaseModelSpecError("empty base model")
            return cls("builtin", text)
        if kind == "hf":
            if not HUB_ID.match(value):
                raise BaseModelSpecError(f"{value!r} is not a Hugging Face repository id (owner/name)")
            return cls("hf", value)
        if kind == "checkpoint":
            if not _ID.match(value):
                raise BaseModelSpecError(f"{text!r} is not a valid spec; use checkpoint:<id>")
            return cls("checkpoint", value)
        if kind == "run":
            match = _RUN.match(value)
            if match is None or not _ID.match(match["run_id"]):
                raise BaseModelSpecError(f"{text!r} is not a valid spec; use run:<id> or run:<id>@<step>")
            step = match["step"]
            return cls("run", match["run_id"], int(step) if step is not None else None)
        raise BaseModelSpecError(f"unknown base model {text!r}")

    @classmethod
    def checkpoint(cls, checkpoint_id: str) -> BaseModelSpec:
        return cls("checkpoint", checkpoint_id)

    @classmethod
    def run(cls, run_id: str, step: int | None = None) -> BaseModelSpec:
        return cls("run", run_id, step)

    @classmethod
    def hub(cls, repo_id: str) -> BaseModelSpec:
        return cls("hf", repo_id)

    @classmethod
    def run_step_prefix(cls, run_id: str) -> str:
        """What every ``run:<id>@<step>`` spec of ``run_id`` starts with (to find them in SQL)."""
        return f"{cls.run(run_id)}{_STEP}"

    def __str__(self) -> str:
        if self.kind == "builtin":
            return self.name
        suffix = f"{_STEP}{self.step}" if self.step is not None else ""
        return f"{self.kind}:{self.name}{suffix}"
