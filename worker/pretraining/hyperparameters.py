"""The hyperparameters of a continual pre-training run: one definition for the CLI, run-config JSON,
the REST API and the training engine.

The field names are a public contract. Every field carries its default, its valid range and a line of
help; unknown names are refused (``extra="forbid"``) so a typo never silently falls back to a default.
This module imports no torch: the API validates submissions with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "DEFAULT_DOMAIN_TOKEN_MIN_COUNT",
    "DEFAULT_EVAL_FRACTION",
    "MAX_DOMAIN_TOKENS",
    "MAX_REPLAY_RATIO",
    "PREPARATION_FIELDS",
    "HyperparameterError",
    "Hyperparameters",
    "PreparationConfig",
    "load_hyperparameters",
    "validation_message",
]


DEFAULT_EVAL_FRACTION = 0.05
# add_domain_tokens' ceiling: a third of BERT's 30,522 rows, ten times its [unusedK] rows; beyond it every
# MLM softmax pays for words seen ever less often.
MAX_DOMAIN_TOKENS = 10_000
# A word becomes a domain token from this many occurrences on (domain_token_min_count's default).
DEFAULT_DOMAIN_TOKEN_MIN_COUNT = 20
# replay_ratio's ceiling: at 0.9 an epoch is already nine parts replay to one part domain text.
MAX_REPLAY_RATIO = 0.9


def validation_message(error: Mapping[str, Any]) -> str:
    """The message of one pydantic error (an item of ``ValidationError.errors()``) as a user reads it: the
    text a validator raised, without pydantic's ``Value error, `` prefix."""
    if error.get("type") == "value_error" and error.get("ctx", {}).get("error") is not None:
        return str(error["ctx"]["error"])
    return str(error.get("msg", "invalid"))


class HyperparameterError(ValueError):
    """A run config that does not validate; ``errors`` lists ``(field, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors))

    @classmethod
    def from_validation_error(cls, exc: ValidationError) -> HyperparameterError:
        errors = []
        for err in exc.errors():
            field = ".".join(str(part) for part in err["loc"]) or "hyperparameters"
            message = validation_message(err)
            if err["type"] == "extra_forbidden":
                message = f"unknown hyperparameter {field!r} (see `bertpt train --help` for the list)"
            errors.append((field, message))
        return cls(errors)


class PreparationConfig(BaseModel):
    """What turns a corpus into training instances (issue 2). Part of the prepared-data cache key."""

    # allow_inf_nan=False: a NaN or an infinity is refused by name (JSON, where configs are stored, has none).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_seq_length: int = Field(
        128,
        ge=8,
        le=4096,
        description="Tokens per instance, [CLS] and [SEP]s included; at most the model's position "
        "embeddings.",
    )
    short_seq_prob: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Probability that an instance targets a random shorter length in [2, max_seq_length], "
        "so the model also sees short inputs (Google's default 0.1).",
    )
    masked_lm_prob: float = Field(
        0.15, gt=0.0, lt=1.0, description="Share of tokens of each sequence to predict (BERT: 0.15)."
    )
    max_predictions_per_seq: int = Field(
        20, ge=1, le=4096, description="Cap on predicted tokens per sequence (Google: 20 for length 128)."
    )
    mask_replace_prob: float = Field(
        0.8, ge=0.0, le=1.0, description="Of the predicted tokens, the share replaced by [MASK]."
    )
    random_replace_prob: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Of the predicted tokens, the share replaced by a random non-special vocabulary token "
        "(the rest stay unchanged).",
    )
    whole_word_mask: bool = Field(
        False, description="Mask all WordPiece pieces of a word together (80/10/10 still applied per piece)."
    )
    masking: Literal["dynamic", "static"] = Field(
        "dynamic",
        description="dynamic: masks drawn afresh for every batch (RoBERTa); static: masks fixed at "
        "preparation, dupe_factor copies with different masks (Google).",
    )
    dupe_factor: int = Field(
        1,
        ge=1,
        le=100,
        description="Static masking only (an error with dynamic masking, which would ignore it): how many "
        "times the corpus is duplicated with different masks and different NSP pairs (Google: 10).",
    )
    nsp: bool = Field(
        True,
        description="Next-sentence prediction. Off: MLM-only instances packed to full length and the NSP "
        "loss left out (a corpus of one document then trains).",
    )
    nsp_balance: Literal["balanced", "google"] = Field(
        "balanced",
        description="NSP only. balanced: IsNext is half of the pairs (0.50 +- 0.02) on any corpus whose "
        "documents hold two sentences, a one-sentence segment A can have its true continuation as B, and "
        "the labels make up for pairs that cannot be IsNext; google: create_pretraining_data.py's rule "
        "(a 50/50 draw, every one-sentence chunk gets a random B, so short documents and long sentences "
        "push IsNext below one half).",
    )
    sentence_splitting: Literal["none", "auto"] = Field(
        "none",
        description="none: every line is one sentence (the BERT format). auto: lines longer than an "
        "instance's segment budget (max_seq_length - 3 wordpieces with NSP, - 2 without) are split into "
        "sentences with sentencex, for corpora of one paragraph per line.",
    )
    eval_fraction: float = Field(
        DEFAULT_EVAL_FRACTION,
        ge=0.0,
        lt=1.0,
        description="Share of documents held out, whole, for evaluation (a corpus of one document: a "
        "contiguous block of that share of its sentences). Leave it at its default when eval_documents is "
        "given; with an eval corpus nothing is held out. At its default, a corpus too small to spare a "
        "split and train on the rest is trained on whole, without held-out evaluation (a warning says so).",
    )
    eval_documents: int | None = Field(
        None, ge=0, description="Number of documents held out for evaluation, instead of eval_fraction."
    )
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for data preparation and training.")

    @model_validator(mode="after")
    def _check_replacement_shares(self) -> PreparationConfig:
        if self.mask_replace_prob + self.random_replace_prob > 1.0 + 1e-9:
            raise ValueError("mask_replace_prob + random_replace_prob must be at most 1")
        return self

    def check_eval_corpus(self) -> None:
        """With a separate eval corpus nothing is held out of the training corpus, so ``eval_documents``,
        or an ``eval_fraction`` other than its default, would be ignored: HyperparameterError naming the
        field (exit 2 in the CLI, 422 in the REST API, before anything is prepared)."""
        if self.eval_documents is not None:
            field, given = "eval_documents", f"eval_documents={self.eval_documents}"
        elif self.eval_fraction != DEFAULT_EVAL_FRACTION:
            field, given = "eval_fraction", f"eval_fraction={self.eval_fraction}"
        else:
            return
        raise HyperparameterError(
            [
                (
                    field,
                    f"{given} holds documents of the corpus out, but an eval corpus is given (eval_corpus), "
                    "so nothing is held out and it would be ignored: drop one of them",
                )
            ]
        )

    # Settings that another setting makes ignored are errors, never silence. Each check is a validator
    # of the later field, so the error names it (REST: ``param`` = ``hyperparameters.<field>``) and its
    # message names the other. A value equal to the default counts as not set: stored runs echo every
    # default, and must still validate.

    @field_validator("dupe_factor")
    @classmethod
    def _dupe_factor_needs_static_masking(cls, value: int, info: ValidationInfo) -> int:
        if value != 1 and info.data.get("masking") == "dynamic":
            raise ValueError(
                f"dupe_factor={value} applies only to masking='static' (copies with different fixed masks); "
                "with masking='dynamic' every epoch draws new masks and dupe_factor would be ignored: set "
                "masking='static' or leave dupe_factor at 1"
            )
        return value

    @field_validator("nsp_balance")
    @classmethod
    def _nsp_balance_needs_nsp(cls, value: str, info: ValidationInfo) -> str:
        if value != "balanced" and info.data.get("nsp") is False:
            raise ValueError(
                f"nsp_balance={value!r} shapes next-sentence pairs, but nsp is false (no pairs are made) and "
                "it would be ignored: drop nsp_balance or set nsp true"
            )
        return value

    @field_validator("eval_documents")
    @classmethod
    def _eval_documents_replaces_eval_fraction(cls, value: int | None, info: ValidationInfo) -> int | None:
        fraction = info.data.get("eval_fraction")
        if value is not None and fraction is not None and fraction != DEFAULT_EVAL_FRACTION:
            raise ValueError(
                f"eval_documents={value} and eval_fraction={fraction} both size the held-out split, and "
                "eval_fraction would be ignored: give one of them"
            )
        return value


PREPARATION_FIELDS: tuple[str, ...] = tuple(PreparationConfig.model_fields)


class Hyperparameters(PreparationConfig):
    """Every knob of a run (issue 3); the data-preparation ones are inherited from PreparationConfig."""

    max_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Optimizer steps to train; set this or num_epochs."
    )
    num_epochs: float | None = Field(
        None,
        gt=0.0,
        le=1000.0,
        description="Passes over the training instances, used when max_steps is not set (default 1).",
    )
    batch_size: int = Field(
        32,
        ge=1,
        le=65536,
        description="Sequences per forward pass, all devices together (the global batch): with "
        "resources.devices above 1 each device trains on batch_size / devices of them, so it must be a "
        "multiple of devices. One optimizer step sums gradient_accumulation_steps such passes "
        "(batch_size x gradient_accumulation_steps sequences).",
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=4096, description="Forward passes summed into one optimizer step."
    )
    learning_rate: float = Field(
        5e-5,
        gt=0.0,
        le=1.0,
        description="Peak AdamW learning rate. Continued pre-training wants a gentle one (2e-5 to 5e-5) "
        "to limit forgetting.",
    )
    warmup_ratio: float = Field(
        0.06, ge=0.0, le=1.0, description="Share of the steps spent warming the learning rate up linearly."
    )
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field(
        "linear",
        description="The learning rate after the warm-up, as transformers' schedulers shape it. linear: "
        "down to 0 at the last step (BERT's); cosine: a cosine decay to min_lr_ratio of the peak (0 when "
        "unset); constant_with_warmup: the peak until the end (for runs ended by early stopping or time). "
        "The warm-up re-warms an already converged checkpoint: for continual pre-training, Gupta et al. "
        "2023 (Continual Pre-Training of Large Language Models: How to (re)warm your model?) find that the "
        "length of the warm-up matters little and the peak learning rate a lot (a higher peak adapts more "
        "to the new domain and forgets more of the old), and both they and Ibrahim et al. 2024 (Simple and "
        "Scalable Strategies to Continually Pre-train Large Language Models) re-warm then decay with a "
        "cosine to a small floor.",
    )
    min_lr_ratio: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="cosine only (an error with another lr_scheduler): the floor the cosine decays to, as a "
        "share of the peak learning rate (transformers' cosine_with_min_lr, min_lr_rate). Unset: the cosine "
        "decays to 0.",
    )
    weight_decay: float = Field(
        0.01, ge=0.0, le=1.0, description="AdamW weight decay (never applied to LayerNorm or biases)."
    )
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm; 0 disables clipping.")
    eval_every_steps: int = Field(
        500, ge=0, description="Evaluate every this many steps (0: only at step 0 and at the end)."
    )
    checkpoint_every_steps: int = Field(
        1000, ge=0, description="Save a resumable checkpoint every this many steps (0: only at the end)."
    )
    keep_checkpoints: int = Field(
        1,
        ge=1,
        le=1000,
        description="How many of the newest checkpoints to keep. One is safe: a checkpoint is written "
        "completely and published by a rename before older ones are removed. Each holds the optimizer "
        "state, about three times the size of the weights (275 MB for MiniLM-L6): keep more only to go "
        "back to an earlier step.",
    )
    select_checkpoint: Literal["last", "best"] = Field(
        "last",
        description="Which evaluated step becomes the run's model. last: the last step; best: the step of "
        "lowest held-out masked_lm_loss among the evaluated steps after step 0 (ties: the earliest), which "
        "needs eval_every_steps and a held-out split. Steps over max_reference_loss_increase are never "
        "selected. The selected step's checkpoint is kept besides the keep_checkpoints newest (one is "
        "written when a step becomes the selection).",
    )
    max_reference_loss_increase: float | None = Field(
        None,
        ge=0.0,
        description="A forgetting budget, in nats: an evaluated step whose reference-corpus masked_lm_loss "
        "is more than this above step 0's (the base checkpoint's) is never selected; with "
        "select_checkpoint=last the newest step within the budget is exported. When no trained step is "
        "within it, the weights of step 0 are exported, with a warning. Needs a reference corpus.",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Stop the run (as completed, with a checkpoint) after this many evaluations in a row "
        "without a lower held-out masked_lm_loss than the best before them, counted from the first "
        "evaluation after step 0 (the loss can rise while the learning rate re-warms). Needs "
        "eval_every_steps and a held-out split; with select_checkpoint=best the best step is exported.",
    )
    max_runtime_seconds: int | None = Field(
        None, ge=1, description="Stop cleanly (with a checkpoint) after this much wall time."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 autocast on GPUs that support it, else fp16 on GPU, fp32 on the CPU.",
    )
    torch_compile: bool | Literal["auto"] = Field(
        "auto",
        description="Compile the loss (the model, its heads, the cross-entropies) with torch.compile: true, "
        "false, or auto: on a GPU, not on the CPU. Compiled once, for any batch length and size (a batch of "
        "one sequence runs eager); the first logged training window includes the compilation.",
    )
    logging_every_steps: int = Field(
        10, ge=1, description="Report training metrics every this many optimizer steps."
    )
    max_nonfinite_steps: int = Field(
        5,
        ge=1,
        le=1000,
        description="Stop the run as failed after this many consecutive steps whose loss or gradient norm "
        "is not finite (each one is skipped, not applied).",
    )
    add_domain_tokens: int = Field(
        0,
        ge=0,
        le=MAX_DOMAIN_TOKENS,
        description="Before training, make up to this many words of the corpus tokens of their own: the most "
        "frequent words (as the tokenizer normalizes and splits the text; pure numbers and punctuation left "
        "out) that it cuts into several wordpieces or maps to [UNK], seen at least domain_token_min_count "
        "times. They go into the checkpoint's [unusedK] vocabulary rows while it has some (BERT's uncased "
        "vocabulary: 994), else into rows appended to the embeddings (rounded up to a multiple of 64); each "
        "new row starts as the mean of the embeddings of the pieces it replaces. The extended tokenizer is "
        "saved with every checkpoint and the model. 0: off.",
    )
    domain_token_min_count: int = Field(
        DEFAULT_DOMAIN_TOKEN_MIN_COUNT,
        ge=1,
        description="add_domain_tokens only (an error when it is 0): how many times a word must occur in the "
        "corpus to become a token. A rarer word's new row is trained on too few occurrences to move far "
        "from its initialization (each occurrence is a masked-LM target 15% of the time), and its pieces "
        "served it as well.",
    )
    replay_ratio: float = Field(
        0.0,
        ge=0.0,
        le=MAX_REPLAY_RATIO,
        description="Share of every epoch's training instances drawn from a general-domain replay corpus "
        "(`--replay-corpus`; `replay_corpus_id` in the REST API), prepared like the corpus and mixed evenly "
        "through the epoch, to limit forgetting; 0: no replay. Continual pre-training that replays a small "
        "share of general text forgets less at little cost to the new domain: Ibrahim et al. 2024 (Simple "
        "and Scalable Strategies to Continually Pre-train Large Language Models) replay 5% for a mild "
        "distribution shift (English to English web text) and 25% for a large one (English to German). "
        "Domain-adaptive pre-training of BERT-like models (Gururangan et al. 2020, Don't Stop Pretraining) "
        "is the setting.",
    )

    @model_validator(mode="after")
    def _check_duration(self) -> Hyperparameters:
        if self.max_steps is not None and self.num_epochs is not None:
            raise ValueError("set max_steps or num_epochs, not both")
        return self

    @field_validator("domain_token_min_count")
    @classmethod
    def _min_count_needs_domain_tokens(cls, value: int, info: ValidationInfo) -> int:
        if value != DEFAULT_DOMAIN_TOKEN_MIN_COUNT and info.data.get("add_domain_tokens") == 0:
            raise ValueError(
                f"domain_token_min_count={value} applies only to add_domain_tokens, which is 0 (off), so it "
                "would be ignored: set add_domain_tokens or drop domain_token_min_count"
            )
        return value

    # Learning-rate schedule and checkpoint selection: like the preparation settings above, a setting that
    # another one makes ignored (or meaningless) is an error of the later field.

    @field_validator("torch_compile", mode="before")
    @classmethod
    def _compile_switch(cls, value: Any) -> Any:
        """true, false or auto: as JSON (booleans) or as words (the command line's, any case)."""
        words = {"true": True, "false": False, "auto": "auto"}
        if isinstance(value, str) and value.strip().lower() in words:
            return words[value.strip().lower()]
        if isinstance(value, bool):
            return value
        raise ValueError(f"true, false or auto, got {value!r}")

    @field_validator("min_lr_ratio")
    @classmethod
    def _min_lr_ratio_needs_cosine(cls, value: float | None, info: ValidationInfo) -> float | None:
        scheduler = info.data.get("lr_scheduler")
        if value is not None and scheduler is not None and scheduler != "cosine":
            raise ValueError(
                f"min_lr_ratio={value} is the floor of the cosine schedule, but lr_scheduler is "
                f"{scheduler!r} and it would be ignored: set lr_scheduler='cosine' or drop min_lr_ratio"
            )
        return value

    @field_validator("select_checkpoint")
    @classmethod
    def _best_needs_evaluations(cls, value: str, info: ValidationInfo) -> str:
        if value == "best" and info.data.get("eval_every_steps") == 0:
            raise ValueError(
                "select_checkpoint='best' chooses among the evaluated steps, but eval_every_steps is 0 (only "
                "step 0 and the last step are evaluated), so the last step would always be chosen: set "
                "eval_every_steps, or select_checkpoint='last'"
            )
        return value

    @field_validator("early_stopping_patience")
    @classmethod
    def _patience_needs_evaluations(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("eval_every_steps") == 0:
            raise ValueError(
                f"early_stopping_patience={value} counts evaluations during training, but eval_every_steps "
                "is 0 (only step 0 and the last step are evaluated) and it would be ignored: set "
                "eval_every_steps, or drop early_stopping_patience"
            )
        return value

    def check_reference_corpus(self, given: bool) -> None:
        """``max_reference_loss_increase`` is measured on the reference corpus: without one (``given``
        false), HyperparameterError naming the field (exit 2 in the CLI, 422 in the REST API)."""
        if self.max_reference_loss_increase is not None and not given:
            raise HyperparameterError(
                [
                    (
                        "max_reference_loss_increase",
                        f"max_reference_loss_increase={self.max_reference_loss_increase} is a budget on the "
                        "reference corpus's masked_lm_loss, but no reference corpus is given "
                        "(--reference-corpus, reference_corpus_id): give one, or drop the budget",
                    )
                ]
            )

    def check_eval_split(self, present: bool) -> None:
        """``select_checkpoint='best'`` and ``early_stopping_patience`` compare held-out masked_lm_losses:
        without a held-out split (``present`` false: eval_fraction 0, or a corpus too small to spare one),
        HyperparameterError naming the field."""
        if present:
            return
        if self.select_checkpoint == "best":
            field, given = "select_checkpoint", "select_checkpoint='best'"
        elif self.early_stopping_patience is not None:
            field = "early_stopping_patience"
            given = f"early_stopping_patience={self.early_stopping_patience}"
        else:
            return
        raise HyperparameterError(
            [
                (
                    field,
                    f"{given} compares the held-out masked_lm_loss of evaluations, but the run has no "
                    "held-out split (eval_fraction is 0, or the corpus is too small to hold one out): give "
                    "an eval corpus or hold documents out (eval_fraction, eval_documents)",
                )
            ]
        )

    @property
    def epochs(self) -> float:
        """num_epochs with its default applied (1 when neither it nor max_steps is set)."""
        return self.num_epochs if self.num_epochs is not None else 1.0

    def preparation(self) -> PreparationConfig:
        return PreparationConfig(**self.model_dump(include=set(PREPARATION_FIELDS)))

    def replay_instances(self, domain_instances: int) -> int:
        """Replay instances mixed into every epoch of ``domain_instances`` domain instances, so that they
        are ``replay_ratio`` of the epoch: ``round(domain * r / (1 - r))``, at least 1 (0 without replay)."""
        r = self.replay_ratio
        return max(1, round(domain_instances * r / (1.0 - r))) if r > 0 else 0

    def devices_error(self, devices: int) -> str | None:
        """Why ``batch_size`` cannot be split over ``devices`` data-parallel processes (torchrun's world
        size), None when it can: ``batch_size`` is the global batch, each process trains on
        ``batch_size / devices`` of it, so it must be a multiple of ``devices``. The trainer raises
        TrainingError with it, the REST API answers 422 (``hyperparameters.batch_size``)."""
        if devices > 1 and self.batch_size % devices:
            return (
                f"batch_size {self.batch_size} is the global batch, split over {devices} devices: it must be "
                f"a multiple of {devices}"
            )
        return None

    def replay_corpus_error(self, *, has_replay_corpus: bool) -> tuple[str, str] | None:
        """``(field, message)`` when ``replay_ratio`` and the presence of a replay corpus disagree (one
        would be ignored, or would have nothing to draw from): ``replay_ratio`` when it is above 0 without
        a corpus, ``replay_corpus`` when a corpus comes with ``replay_ratio`` 0. The CLI exits 2, the REST
        API answers 422 (``hyperparameters.replay_ratio`` or ``replay_corpus_id``)."""
        corpus = "a replay corpus (`--replay-corpus` in `bertpt train`, `replay_corpus_id` in the REST API)"
        if self.replay_ratio > 0 and not has_replay_corpus:
            return (
                "replay_ratio",
                f"replay_ratio={self.replay_ratio} mixes general-domain text into every epoch, but no replay "
                f"corpus is given: give {corpus}, or set replay_ratio to 0",
            )
        if has_replay_corpus and self.replay_ratio == 0:
            return (
                "replay_corpus",
                f"{corpus} is given, but replay_ratio is 0, so it would be ignored: set replay_ratio (about "
                "0.05 for a mild domain shift, 0.25 for a large one) or leave the replay corpus out",
            )
        return None


def load_hyperparameters(
    config: dict[str, Any] | str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Hyperparameters:
    """Build Hyperparameters from a run-config JSON file or dict, then command-line overrides.

    Raises HyperparameterError naming every bad field.
    """
    values: dict[str, Any] = {}
    if isinstance(config, (str, Path)):
        path = Path(config)
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise HyperparameterError([(str(path), f"cannot read run config: {exc}")]) from exc
        if not isinstance(loaded, dict):
            raise HyperparameterError([(str(path), "run config must be a JSON object")])
        values.update(loaded.get("hyperparameters", loaded))
    elif config is not None:
        values.update(config)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Hyperparameters(**values)
    except ValidationError as exc:
        raise HyperparameterError.from_validation_error(exc) from exc
