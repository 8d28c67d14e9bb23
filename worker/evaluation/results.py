"""What a downstream comparison reports, as types (pydantic only: the API serves them, the worker and the
CLI build them).

Every metric is a fraction in [0, 1] (accuracy; macro-F1 as scikit-learn's ``f1_score(average="macro")``).
Seeds pair the models: seed ``s`` of every model used the same training/validation split, data order and
classifier-head initialization seed, so the difference of two models is taken seed by seed (a paired
comparison), and its 95% interval is Student's t interval over those per-seed differences.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.evaluation.settings import EvaluationMethod

__all__ = [
    "TABLE_HEADERS",
    "ComparisonResult",
    "EvaluationProgress",
    "MetricSummary",
    "ModelResult",
    "PairedDifference",
]

TABLE_HEADERS = (
    "model",
    "accuracy (%)",
    "macro-F1 (%)",
    "Δ accuracy vs first (95% CI)",
    "Δ macro-F1 vs first (95% CI)",
)


class MetricSummary(BaseModel):
    """One metric of one model over the seeds: ``per_seed[i]`` belongs to ``ComparisonResult.seeds[i]``."""

    model_config = ConfigDict(frozen=True)

    mean: float
    sd: float | None = Field(description="Sample standard deviation (ddof=1); None with a single seed.")
    per_seed: list[float]

    def format(self) -> str:
        """``"84.2 ± 2.1"`` in percent (``"84.2"`` without an sd)."""
        if self.sd is None:
            return f"{100 * self.mean:.1f}"
        return f"{100 * self.mean:.1f} ± {100 * self.sd:.1f}"


class PairedDifference(BaseModel):
    """A model minus the first model, seed by seed: the mean difference and its 95% t interval."""

    model_config = ConfigDict(frozen=True)

    mean: float
    ci_low: float | None = Field(
        description="Lower bound of the 95% t interval; None with fewer than 2 seeds."
    )
    ci_high: float | None = Field(
        description="Upper bound of the 95% t interval; None with fewer than 2 seeds."
    )
    n: int = Field(description="Seeds paired.")

    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or below 0 (the difference is larger than seed noise)."""
        if self.ci_low is None or self.ci_high is None:
            return False
        return self.ci_low > 0 or self.ci_high < 0

    def format(self) -> str:
        """``"+3.1 [-0.5, +6.7]"`` in percentage points, ``*`` appended when the interval excludes 0."""
        if self.ci_low is None or self.ci_high is None:
            return f"{100 * self.mean:+.1f}"
        star = " *" if self.excludes_zero() else ""
        return f"{100 * self.mean:+.1f} [{100 * self.ci_low:+.1f}, {100 * self.ci_high:+.1f}]{star}"


class ModelResult(BaseModel):
    """One model's scores on the test part."""

    model_config = ConfigDict(frozen=True)

    model: str
    accuracy: MetricSummary
    macro_f1: MetricSummary
    difference_vs_first: dict[str, PairedDifference] | None = Field(
        None, description='Keys "accuracy" and "macro_f1"; None for the first model (the baseline).'
    )
    max_seq_length: int | None = Field(
        None, description="Tokens per example the model was given (resolved from the data when not set)."
    )
    epochs_trained: list[int] | None = Field(
        None,
        description="Fine-tuning only: epochs run per seed. Planned: max(num_epochs, ceil(min_train_steps / "
        "steps per epoch)), so more than num_epochs on a small training part; fewer after an early stop.",
    )


class ComparisonResult(BaseModel):
    """A comparison of models on one labelled task; ``models[0]`` is the baseline of the differences."""

    model_config = ConfigDict(frozen=True)

    method: EvaluationMethod
    seeds: list[int]
    labels: list[str]
    train_examples: int
    test_examples: int
    models: list[ModelResult]
    hyperparameters: dict[str, Any]
    runtime_seconds: float

    def table_rows(self) -> list[tuple[str, str, str, str, str]]:
        """One row of strings per model, in the order of :data:`TABLE_HEADERS` (the baseline's differences
        are ``"baseline"``)."""
        rows = []
        for result in self.models:
            diff = result.difference_vs_first
            rows.append(
                (
                    result.model,
                    result.accuracy.format(),
                    result.macro_f1.format(),
                    diff["accuracy"].format() if diff else "baseline",
                    diff["macro_f1"].format() if diff else "baseline",
                )
            )
        return rows

    def summary_line(self) -> str:
        """What was compared, in one line: method, seeds, example counts and labels."""
        return (
            f"{self.method} on {self.train_examples} training / {self.test_examples} test examples, "
            f"{len(self.labels)} labels, seeds {self.seeds}, {self.runtime_seconds:.1f} s"
        )

    def to_text(self) -> str:
        """The table as aligned plain text (logs, manifests); ``*``: the 95% interval excludes 0."""
        rows = [TABLE_HEADERS, *self.table_rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADERS))]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
        ]
        return "\n".join([self.summary_line(), *(line.rstrip() for line in lines)])


class EvaluationProgress(BaseModel):
    """Reported as the first fit starts and after each (model, seed) fit: ``done`` of ``total`` fits are
    finished."""

    model_config = ConfigDict(frozen=True)

    model: str
    model_index: int
    seed: int
    done: int
    total: int
