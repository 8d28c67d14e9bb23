"""The settings of a downstream comparison: one definition for ``bertpt evaluate``, the REST API and the
worker.

Fine-tuning defaults come from the BERT paper's fine-tuning grid (Devlin et al. 2019, appendix A.3:
learning rate in {5e-5, 3e-5, 2e-5}, batch size in {16, 32}, epochs in {2, 3, 4}; weight decay 0.01 and
linear decay after a warm-up, as in its pre-training recipe), with one addition for small datasets: a
minimum number of optimizer steps (``min_train_steps``), without which three epochs of a few hundred
examples are too few updates (on a generated 3-topic task of 90 training examples, all-MiniLM-L6-v2 with
seed 0 scored 73.3% accuracy after 3 epochs, 18 steps, and 96.7% with the 200-step minimum; chance 33%).
Unknown names are refused (``extra="forbid"``) so a typo never silently falls back to a default. This
module imports pydantic only: the API validates request bodies with it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "DEFAULT_SPLIT_SEED",
    "MAX_SEEDS",
    "EvaluationConfig",
    "EvaluationHyperparameters",
    "EvaluationMethod",
    "seed_values",
]

EvaluationMethod = Literal["finetune", "probe"]

# The seed of the train/test split when a dataset comes without a test file: fixed, so every evaluation of
# one dataset scores every model on the same test examples (and a rerun on the same ones again).
DEFAULT_SPLIT_SEED = 0
MAX_SEEDS = 20
# The hyperparameters each method ignores (the probe extracts its features in fixed batches and fits no
# network; fine-tuning fits no logistic regression). max_seq_length and the split are shared.
_IGNORED_BY: dict[str, tuple[str, ...]] = {
    "probe": (
        "num_epochs",
        "learning_rate",
        "min_train_steps",
        "batch_size",
        "weight_decay",
        "warmup_ratio",
        "validation_fraction",
        "early_stopping_patience",
    ),
    "finetune": ("probe_cv_folds", "probe_cs", "probe_max_iter"),
}


class EvaluationHyperparameters(BaseModel):
    """The knobs of fine-tuning (``method="finetune"``), of the linear probe (``method="probe"``) and of
    the split. Every model of a comparison gets the same values, seeds and splits."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # -- fine-tuning (BertForSequenceClassification) --
    num_epochs: int = Field(
        3, ge=1, le=50, description="Passes over the training part (BERT paper's grid: 2, 3 or 4)."
    )
    learning_rate: float = Field(
        3e-5, gt=0.0, le=1e-2, description="Peak AdamW learning rate (BERT paper's grid: 5e-5, 3e-5, 2e-5)."
    )
    min_train_steps: int = Field(
        200,
        ge=0,
        le=1_000_000,
        description="Optimizer steps at the least: a small training part gets more epochs than num_epochs "
        "(max(num_epochs, ceil(min_train_steps / steps per epoch))). Three epochs of a few hundred examples "
        "are a few dozen steps, too few to learn (Mosbach et al. 2021, Zhang et al. 2021: train small "
        "datasets longer); early stopping ends the extra epochs once the validation loss stops falling.",
    )
    batch_size: int = Field(
        16,
        ge=1,
        le=1024,
        description="Examples per optimizer step (BERT paper's grid: 16 or 32; 16 gives small datasets "
        "twice the steps).",
    )
    max_seq_length: int | None = Field(
        None,
        ge=8,
        le=512,
        description="Tokens per example, [CLS] and [SEP]s included. None: the longest tokenized training "
        "example, capped at 512 and at the model's max_position_embeddings (batches are padded to their "
        "own longest example, so the cap costs only the long batches).",
    )
    weight_decay: float = Field(
        0.01, ge=0.0, le=1.0, description="AdamW weight decay, not applied to biases and LayerNorm (BERT)."
    )
    warmup_ratio: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description="Share of the optimizer steps with a linear warm-up, then linear decay to 0 (BERT).",
    )
    validation_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=0.5,
        description="Share of the training part held out (stratified, drawn with each seed) to choose the "
        "epoch with the lowest validation loss and to stop early; 0: no validation, the last epoch is kept.",
    )
    early_stopping_patience: int | None = Field(
        3,
        ge=1,
        le=50,
        description="Stop after this many epochs without a lower validation loss; None: run every epoch "
        "(the best epoch is still the one kept). Without validation (validation_fraction 0) it does nothing.",
    )
    # -- linear probe (frozen mean-pooled features + logistic regression) --
    probe_cv_folds: int = Field(
        5,
        ge=2,
        le=20,
        description="Stratified folds of the cross-validation that chooses the inverse regularization C "
        "(capped at the smallest label count).",
    )
    probe_cs: int = Field(
        10,
        ge=1,
        le=50,
        description="Values of C tried, log-spaced in [1e-4, 1e4] (the grid of scikit-learn's "
        "LogisticRegressionCV).",
    )
    probe_max_iter: int = Field(
        1000, ge=10, le=100_000, description="lbfgs iterations per logistic-regression fit."
    )
    # -- split --
    test_fraction: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="Without a separate test file: the share of the dataset held out for testing "
        "(stratified, drawn with split_seed).",
    )
    split_seed: int = Field(
        DEFAULT_SPLIT_SEED,
        ge=0,
        description="Without a separate test file: the seed of the stratified train/test split (fixed, "
        "so every model and every rerun is scored on the same test examples).",
    )


class EvaluationConfig(BaseModel):
    """What to run: the method, how many seeds (seeds 0..seeds-1, paired across models) and the knobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: EvaluationMethod = Field(
        "finetune",
        description="finetune: BertForSequenceClassification fine-tuned per model per seed; probe: a "
        "cross-validated logistic regression on frozen mean-pooled features.",
    )
    seeds: int = Field(
        5,
        ge=1,
        le=MAX_SEEDS,
        description="Seeds 0..seeds-1, the same for every model; with 2 or more, each model gets an sd and a "
        "95% interval of its paired difference to the first model.",
    )
    hyperparameters: EvaluationHyperparameters = Field(default_factory=EvaluationHyperparameters)

    @model_validator(mode="after")
    def _no_ignored_hyperparameters(self) -> EvaluationConfig:
        """A hyperparameter the method ignores, set to other than its default, is refused (error at
        ``hyperparameters.<field>``) rather than silently dropped. Compared with the default, not with
        ``model_fields_set``: a stored config, every field filled in, validates again."""
        h = self.hyperparameters
        errors = [
            InitErrorDetails(
                type=PydanticCustomError(
                    "ignored_by_method",
                    "{field} is not used by method '{method}'; remove it or choose the other method",
                    {"field": name, "method": self.method},
                ),
                loc=("hyperparameters", name),
                input=getattr(h, name),
            )
            for name in _IGNORED_BY[self.method]
            if getattr(h, name) != EvaluationHyperparameters.model_fields[name].default
        ]
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self


def seed_values(config: EvaluationConfig) -> list[int]:
    """The seeds a comparison runs with: ``0 .. config.seeds - 1``."""
    return list(range(config.seeds))
