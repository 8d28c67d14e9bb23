"""Which evaluated step a run exports, and when it stops early: pure functions of its evaluations.

A run evaluates its held-out split (``eval``) and its reference corpus (``reference``) at step 0 (the base
checkpoint), every ``eval_every_steps`` and at the end. From those masked-LM losses:

- ``select_checkpoint='last'`` exports the last step; ``'best'`` the trained step of lowest held-out
  masked_lm_loss (ties: the earliest, the fewer updates away from the base). Step 0 is not a candidate:
  the user asked for continual pre-training, and an eval loss that ended above the base's is already
  a warning of its own (``eval_loss_increased``).
- ``max_reference_loss_increase`` (a forgetting budget, nats): a step whose reference masked_lm_loss
  is more than that above step 0's is never selected. With ``last``, the newest step within the budget
  is exported; when no trained step is within it, step 0's weights (the base checkpoint as evaluated
  before training) are, and a warning says so: a model that broke the budget is never handed over as
  the result, and the run is not failed for a training that merely did not help.
- ``early_stopping_patience``: the run stops after that many evaluations in a row without a held-out
  masked_lm_loss below the best before them. Counted from the first evaluation after step 0: re-warming
  the learning rate of a converged checkpoint first raises the loss (Gupta et al. 2023, Continual
  Pre-Training of Large Language Models: How to (re)warm your model?), which must not end the run;
  transformers' ``EarlyStoppingCallback`` counts the same way (no minimum improvement).

The trainer calls these at every evaluation, and the engine at the end; this module imports pydantic
only (tests feed it made-up losses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from worker.pretraining.hyperparameters import Hyperparameters
from worker.pretraining.records import RunWarning, SelectedCheckpoint, StoppedEarly

__all__ = [
    "FORGETTING_BUDGET_EXCEEDED",
    "NO_CHECKPOINT_WITHIN_BUDGET",
    "EvaluatedStep",
    "SelectionRules",
    "choose_checkpoint",
    "evaluations_without_improvement",
    "selection_warnings",
    "stop_early",
]

# The codes of the run warnings of a forgetting budget.
FORGETTING_BUDGET_EXCEEDED = "forgetting_budget_exceeded"
NO_CHECKPOINT_WITHIN_BUDGET = "no_checkpoint_within_budget"


class EvaluatedStep(BaseModel):
    """The masked-LM losses of one evaluation (None: the split does not exist)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    step: int
    eval_masked_lm_loss: float | None = None
    reference_masked_lm_loss: float | None = None


@dataclass(frozen=True)
class SelectionRules:
    """The hyperparameters of checkpoint selection and early stopping (see the module docstring)."""

    select_checkpoint: Literal["last", "best"] = "last"
    max_reference_loss_increase: float | None = None
    early_stopping_patience: int | None = None

    @classmethod
    def from_hyperparameters(cls, h: Hyperparameters) -> SelectionRules:
        return cls(h.select_checkpoint, h.max_reference_loss_increase, h.early_stopping_patience)

    @property
    def keeps_weights(self) -> bool:
        """Whether a step before the last may be exported, so that the selected step's weights must be
        kept until the end."""
        return self.select_checkpoint == "best" or self.max_reference_loss_increase is not None


def _steps(steps: Sequence[int]) -> str:
    return f"step {steps[0]}" if len(steps) == 1 else f"steps {', '.join(map(str, steps))}"


def _by_step(evaluations: Sequence[EvaluatedStep]) -> dict[int, EvaluatedStep]:
    """The evaluations by step, in step order (a later evaluation of the same step replaces the earlier)."""
    return dict(sorted({e.step: e for e in evaluations}.items()))


def choose_checkpoint(
    evaluations: Sequence[EvaluatedStep], rules: SelectionRules, last_step: int
) -> SelectedCheckpoint | None:
    """The step to export after training up to ``last_step``, given the ``evaluations`` so far (step 0's
    included), and why. None when nothing can be chosen yet (``best``, no evaluation after step 0).

    Raises ValueError when a forgetting budget is set but step 0's reference loss is missing (nothing to
    measure the budget against).
    """
    by_step = _by_step(evaluations)
    trained = [e for step, e in by_step.items() if step > 0]
    budget = rules.max_reference_loss_increase
    base = by_step.get(0)
    base_reference = base.reference_masked_lm_loss if base is not None else None
    if budget is not None and base_reference is None and trained:
        raise ValueError("a forgetting budget needs step 0's reference masked_lm_loss, and there is none")

    def increase(e: EvaluatedStep) -> float | None:
        if base_reference is None or e.reference_masked_lm_loss is None:
            return None
        return e.reference_masked_lm_loss - base_reference

    def within_budget(e: EvaluatedStep) -> bool:
        if budget is None:
            return True
        change = increase(e)
        return change is not None and change <= budget

    rejected = [e.step for e in trained if not within_budget(e)]
    eligible = [e for e in trained if within_budget(e)]
    budget_text = f"the forgetting budget of {budget:g} nats" if budget is not None else ""
    over_text = f" ({_steps(rejected)} over it)" if rejected else ""

    def selected(e: EvaluatedStep | None, step: int, reason: str) -> SelectedCheckpoint:
        return SelectedCheckpoint(
            step=step,
            select_checkpoint=rules.select_checkpoint,
            reason=reason,
            eval_masked_lm_loss=e.eval_masked_lm_loss if e is not None else None,
            reference_masked_lm_loss=e.reference_masked_lm_loss if e is not None else None,
            reference_loss_increase=increase(e) if e is not None else None,
            max_reference_loss_increase=budget,
            rejected_over_budget=rejected,
            evaluated_steps=[e.step for e in trained],
        )

    if rules.select_checkpoint == "last" and budget is None:
        return selected(by_step.get(last_step), last_step, "the last step (select_checkpoint=last)")
    if rules.select_checkpoint == "best":
        candidates = [e for e in eligible if e.eval_masked_lm_loss is not None]
        if candidates:
            best = min(candidates, key=lambda e: (e.eval_masked_lm_loss, e.step))
            among = f"the {len(candidates)} evaluated steps after step 0"
            if budget is not None:
                among += f" within {budget_text}{over_text}"
            return selected(
                best, best.step, f"lowest eval masked_lm_loss ({best.eval_masked_lm_loss:.4f}) among {among}"
            )
    elif eligible:
        newest = eligible[-1]
        change = increase(newest)
        if newest.step == last_step:
            reason = (
                f"the last step (select_checkpoint=last); its reference masked_lm_loss is {change:+.4f} nats "
                f"from step 0's, within {budget_text}"
            )
        else:
            reason = f"the last evaluated step within {budget_text}{over_text}"
        return selected(newest, newest.step, reason)
    if budget is None or base is None:
        return None
    reason = (
        f"no evaluated step after step 0 is within {budget_text}{over_text}: the weights of step 0, the base "
        "checkpoint before training, are exported"
        if trained
        else "step 0, the base checkpoint: no step after it has been evaluated yet"
    )
    return selected(base, 0, reason)


def selection_warnings(selected: SelectedCheckpoint) -> list[RunWarning]:
    """What the user must know about a selection: steps over the forgetting budget
    (``forgetting_budget_exceeded``), and the base exported because no trained step was within it
    (``no_checkpoint_within_budget``)."""
    rejected = selected.rejected_over_budget
    if not rejected or selected.max_reference_loss_increase is None:
        return []
    over = (
        f"the reference masked_lm_loss rose more than max_reference_loss_increase="
        f"{selected.max_reference_loss_increase:g} nats above step 0's at {_steps(rejected)}"
    )
    remedy = (
        "To forget less: a lower learning_rate, replay of general text (replay_ratio), or fewer steps "
        "(early_stopping_patience)."
    )
    if selected.step == 0:
        message = (
            f"no trained step is within the forgetting budget: {over}, every evaluated step after step 0. "
            f"The exported model is step 0's weights, the base checkpoint as it was before training. {remedy}"
        )
        return [RunWarning(code=NO_CHECKPOINT_WITHIN_BUDGET, count=len(rejected), message=message)]
    message = f"{over}: not selected; the exported model is step {selected.step}'s. {remedy}"
    return [RunWarning(code=FORGETTING_BUDGET_EXCEEDED, count=len(rejected), message=message)]


def evaluations_without_improvement(evaluations: Sequence[EvaluatedStep]) -> tuple[int, EvaluatedStep | None]:
    """(how many evaluations after step 0 in a row, the last included, did not lower the held-out
    masked_lm_loss below the best before them; that best evaluation). (0, None) before the first."""
    best: EvaluatedStep | None = None
    since = 0
    for step, e in _by_step(evaluations).items():
        loss = e.eval_masked_lm_loss
        if step == 0 or loss is None:
            continue
        if best is None or loss < best.eval_masked_lm_loss:  # type: ignore[operator]
            best, since = e, 0
        else:
            since += 1
    return since, best


def stop_early(evaluations: Sequence[EvaluatedStep], patience: int | None) -> StoppedEarly | None:
    """Whether the run stops at its latest evaluation (``patience`` evaluations in a row without
    improvement, see :func:`evaluations_without_improvement`), with the record saying why; else None."""
    if patience is None or not evaluations:
        return None
    since, best = evaluations_without_improvement(evaluations)
    if since < patience or best is None or best.eval_masked_lm_loss is None:
        return None
    step = max(e.step for e in evaluations)
    return StoppedEarly(
        step=step,
        best_step=best.step,
        best_eval_masked_lm_loss=best.eval_masked_lm_loss,
        patience=patience,
        reason=(
            f"{since} evaluations in a row without a held-out masked_lm_loss below step {best.step}'s "
            f"({best.eval_masked_lm_loss:.4f}); early_stopping_patience={patience}"
        ),
    )
