"""Checkpoint selection and early stopping: pure functions of the evaluations (made-up losses), the
hyperparameters that configure them, and real runs of the tiny BERT that select, refuse, stop early and
follow transformers' learning-rate schedules."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import get_scheduler

from tests.support import tiny_run_hyperparameters, write_documents
from worker.pretraining.engine import run_pretraining
from worker.pretraining.hyperparameters import HyperparameterError, Hyperparameters, load_hyperparameters
from worker.pretraining.layout import MODEL_MANIFEST
from worker.pretraining.records import (
    CheckpointSaved,
    EvalMetrics,
    LogLine,
    MetricsRecord,
    ModelManifest,
    Progress,
    TrainingRecord,
    TrainingResult,
    TrainMetrics,
)
from worker.pretraining.selection import (
    FORGETTING_BUDGET_EXCEEDED,
    NO_CHECKPOINT_WITHIN_BUDGET,
    EvaluatedStep,
    SelectionRules,
    choose_checkpoint,
    evaluations_without_improvement,
    selection_warnings,
    stop_early,
)


def _evaluations(losses: dict[int, tuple[float, float | None]]) -> list[EvaluatedStep]:
    """``{step: (eval masked_lm_loss, reference masked_lm_loss)}`` as evaluations."""
    return [
        EvaluatedStep(step=step, eval_masked_lm_loss=held_out, reference_masked_lm_loss=reference)
        for step, (held_out, reference) in losses.items()
    ]


# Step 0 has the lowest eval loss (it is never a candidate); steps 20 and 30 forget more than 0.05 nats of
# the reference text, steps 10 and 40 less; 30 and 20 have the lowest eval losses, 40 the lowest of the rest.
RUN = _evaluations(
    {
        0: (2.0, 3.0),
        10: (3.0, 3.01),
        20: (2.5, 3.10),
        30: (2.4, 3.06),
        40: (2.8, 3.04),
    }
)


def test_best_is_the_lowest_eval_loss_after_step_0_earliest_on_ties() -> None:
    chosen = choose_checkpoint(RUN, SelectionRules("best"), 40)
    assert chosen is not None
    assert (chosen.step, chosen.eval_masked_lm_loss, chosen.reference_masked_lm_loss) == (30, 2.4, 3.06)
    assert chosen.reference_loss_increase == pytest.approx(0.06)
    assert chosen.rejected_over_budget == [] and chosen.evaluated_steps == [10, 20, 30, 40]
    assert chosen.reason == "lowest eval masked_lm_loss (2.4000) among the 4 evaluated steps after step 0"
    assert selection_warnings(chosen) == []
    tied = [*RUN, EvaluatedStep(step=50, eval_masked_lm_loss=2.4, reference_masked_lm_loss=3.0)]
    assert choose_checkpoint(tied, SelectionRules("best"), 50).step == 30  # type: ignore[union-attr]
    # Nothing evaluated after step 0 yet: nothing to choose.
    assert choose_checkpoint(RUN[:1], SelectionRules("best"), 0) is None


def test_steps_over_the_forgetting_budget_are_never_selected() -> None:
    best = choose_checkpoint(RUN, SelectionRules("best", 0.05), 40)
    assert best is not None
    assert (best.step, best.rejected_over_budget, best.max_reference_loss_increase) == (40, [20, 30], 0.05)
    assert best.reason == (
        "lowest eval masked_lm_loss (2.8000) among the 2 evaluated steps after step 0 within the forgetting "
        "budget of 0.05 nats (steps 20, 30 over it)"
    )
    (warning,) = selection_warnings(best)
    assert warning.code == FORGETTING_BUDGET_EXCEEDED and warning.count == 2
    assert "at steps 20, 30" in warning.message and "the exported model is step 40's" in warning.message
    # last: the last step when it is within the budget...
    last = choose_checkpoint(RUN, SelectionRules("last", 0.05), 40)
    assert last is not None and last.step == 40 and "within the forgetting budget" in last.reason
    # ... else the newest step that is, with a warning; never the step over it.
    over = [*RUN, EvaluatedStep(step=50, eval_masked_lm_loss=2.3, reference_masked_lm_loss=3.2)]
    last = choose_checkpoint(over, SelectionRules("last", 0.05), 50)
    assert last is not None and (last.step, last.rejected_over_budget) == (40, [20, 30, 50])
    assert (
        last.reason
        == "the last evaluated step within the forgetting budget of 0.05 nats (steps 20, 30, 50 over it)"
    )
    assert [w.code for w in selection_warnings(last)] == [FORGETTING_BUDGET_EXCEEDED]
    # A budget of 0 accepts a step that forgot nothing (an increase of exactly 0), not one that forgot a bit.
    exact = _evaluations({0: (2.0, 3.0), 10: (1.9, 3.0), 20: (1.8, 3.001)})
    assert choose_checkpoint(exact, SelectionRules("best", 0.0), 20).step == 10  # type: ignore[union-attr]


def test_no_step_within_the_budget_exports_step_0_with_a_warning() -> None:
    chosen = choose_checkpoint(RUN, SelectionRules("best", 0.001), 40)
    assert chosen is not None
    assert (chosen.step, chosen.rejected_over_budget) == (0, [10, 20, 30, 40])
    assert (chosen.eval_masked_lm_loss, chosen.reference_loss_increase) == (2.0, 0.0)
    assert "the weights of step 0, the base checkpoint before training, are exported" in chosen.reason
    (warning,) = selection_warnings(chosen)
    assert warning.code == NO_CHECKPOINT_WITHIN_BUDGET and "base checkpoint" in warning.message
    last = choose_checkpoint(RUN, SelectionRules("last", 0.001), 40)
    assert last is not None and last.step == 0
    # Before any trained step is evaluated, step 0 is the fallback a budget keeps (its checkpoint is written).
    assert choose_checkpoint(RUN[:1], SelectionRules("last", 0.05), 0).step == 0  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="step 0's reference masked_lm_loss"):
        choose_checkpoint(_evaluations({0: (2.0, None), 10: (1.0, 3.0)}), SelectionRules("best", 0.1), 10)


def test_last_without_a_budget_is_the_last_step_evaluated_or_not() -> None:
    chosen = choose_checkpoint(RUN, SelectionRules("last"), 45)
    assert chosen is not None and chosen.step == 45 and chosen.eval_masked_lm_loss is None
    assert chosen.reason == "the last step (select_checkpoint=last)"
    assert not SelectionRules("last").keeps_weights
    assert SelectionRules("best").keeps_weights and SelectionRules("last", 0.1).keeps_weights


@pytest.mark.parametrize(
    ("losses", "without_improvement", "best_step"),
    [
        ([], 0, None),
        ([3.0], 0, 10),
        ([3.0, 2.9, 2.8], 0, 30),
        ([3.0, 3.0], 1, 10),  # equal is no improvement
        ([3.0, 3.1, 3.2], 2, 10),
        ([3.0, 3.1, 2.9, 2.95], 1, 30),  # an improvement starts the count again
    ],
)
def test_evaluations_without_improvement(
    losses: list[float], without_improvement: int, best_step: int | None
) -> None:
    # Step 0 (the base, lowest of all here) never counts: re-warming raises the loss at first.
    evaluations = [EvaluatedStep(step=0, eval_masked_lm_loss=1.0)] + [
        EvaluatedStep(step=10 * (i + 1), eval_masked_lm_loss=loss) for i, loss in enumerate(losses)
    ]
    since, best = evaluations_without_improvement(evaluations)
    assert since == without_improvement
    assert (best.step if best is not None else None) == best_step


def test_stop_early_after_patience_evaluations_without_improvement() -> None:
    def evaluations(*losses: float) -> list[EvaluatedStep]:
        return [EvaluatedStep(step=10 * i, eval_masked_lm_loss=loss) for i, loss in enumerate(losses)]

    assert stop_early(evaluations(5.0, 3.0, 3.1), 2) is None
    stopped = stop_early(evaluations(5.0, 3.0, 3.1, 3.0), 2)
    assert stopped is not None
    assert (stopped.step, stopped.best_step, stopped.best_eval_masked_lm_loss, stopped.patience) == (
        30,
        10,
        3.0,
        2,
    )
    assert "2 evaluations in a row without a held-out masked_lm_loss below step 10's" in stopped.reason
    assert stop_early(evaluations(5.0, 3.0, 3.1, 3.0), None) is None
    assert stop_early(evaluations(5.0, 6.0), 1) is None  # the first trained evaluation is the first best


def test_settings_that_would_be_ignored_are_errors_naming_the_later_field() -> None:
    cases = {
        "min_lr_ratio": {"min_lr_ratio": 0.1},  # with the default linear schedule
        "select_checkpoint": {"select_checkpoint": "best", "eval_every_steps": 0},
        "early_stopping_patience": {"early_stopping_patience": 2, "eval_every_steps": 0},
    }
    for field, values in cases.items():
        with pytest.raises(HyperparameterError) as caught:
            load_hyperparameters(values)
        assert [name for name, _ in caught.value.errors] == [field]
    for field, value in {
        "min_lr_ratio": 1.0,
        "max_reference_loss_increase": -0.1,
        "early_stopping_patience": 0,
    }.items():
        with pytest.raises(HyperparameterError) as caught:
            load_hyperparameters({"lr_scheduler": "cosine", field: value})
        assert [name for name, _ in caught.value.errors] == [field]
    h = Hyperparameters(
        lr_scheduler="cosine", min_lr_ratio=0.1, select_checkpoint="best", early_stopping_patience=3
    )
    assert SelectionRules.from_hyperparameters(h) == SelectionRules("best", None, 3)


def test_a_budget_needs_a_reference_corpus_and_best_a_held_out_split() -> None:
    budget = Hyperparameters(max_reference_loss_increase=0.05)
    budget.check_reference_corpus(True)
    with pytest.raises(HyperparameterError) as caught:
        budget.check_reference_corpus(False)
    assert caught.value.errors[0][0] == "max_reference_loss_increase"
    assert "no reference corpus" in str(caught.value)
    Hyperparameters().check_reference_corpus(False)
    for values, field in (
        ({"select_checkpoint": "best"}, "select_checkpoint"),
        ({"early_stopping_patience": 2}, "early_stopping_patience"),
    ):
        h = Hyperparameters(**values)
        h.check_eval_split(True)
        with pytest.raises(HyperparameterError) as caught:
            h.check_eval_split(False)
        assert caught.value.errors[0][0] == field and "no held-out split" in str(caught.value)
    Hyperparameters().check_eval_split(False)


# --------------------------------------------------------------------------------------------------
# Real runs of the tiny BERT


def _foreign_text(path: Path, corpus: Path, tokenizer: Any, seed: int) -> Path:
    """Documents of whole-word tokens that ``corpus`` never uses, without punctuation: training on
    ``corpus`` only lowers their predicted probability, so their masked-LM loss rises at every step (a
    reference that is forgotten, and an eval split that never improves, by construction)."""
    seen = set(tokenizer.tokenize(corpus.read_text(encoding="utf-8")))
    unseen = sorted(token for token in tokenizer.get_vocab() if token.isalpha() and token not in seen)
    rng = random.Random(seed)
    documents = [[" ".join(rng.choice(unseen) for _ in range(10)) for _ in range(4)] for _ in range(12)]
    return write_documents(path, documents)


def _losses(records: list[TrainingRecord], split: str) -> dict[int, float]:
    return {
        r.step: r.metrics.masked_lm_loss
        for r in records
        if isinstance(r, MetricsRecord) and r.split == split and isinstance(r.metrics, EvalMetrics)
    }


def _learning_rates(records: list[TrainingRecord]) -> dict[int, float]:
    return {
        r.step: r.metrics.learning_rate
        for r in records
        if isinstance(r, MetricsRecord) and isinstance(r.metrics, TrainMetrics)
    }


def _transformers_schedule(name: str, h: Hyperparameters, **kwargs: float) -> dict[int, float]:
    """The learning rate of each step (what the optimizer applies, and Trainer logs) of transformers' own
    scheduler ``name`` for ``h``."""
    assert h.max_steps is not None
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=h.learning_rate)
    scheduler = get_scheduler(
        name,
        optimizer,
        num_warmup_steps=math.ceil(h.max_steps * h.warmup_ratio),
        num_training_steps=h.max_steps,
        scheduler_specific_kwargs=kwargs,
    )
    rates = {}
    for step in range(1, h.max_steps + 1):
        rates[step] = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
    return rates


def _same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow  # trains the tiny BERT (8 steps)
def test_best_within_the_budget_is_exported_from_its_kept_checkpoint(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, tokenizer: Any, cache_dir: Path
) -> None:
    reference = _foreign_text(tmp_path / "reference.txt", tiny_corpus, tokenizer, seed=1)
    h = tiny_run_hyperparameters(
        max_steps=8,
        learning_rate=1e-2,
        warmup_ratio=0.25,
        lr_scheduler="cosine",
        min_lr_ratio=0.1,
        eval_every_steps=2,
        checkpoint_every_steps=0,
        keep_checkpoints=1,
        select_checkpoint="best",
        max_reference_loss_increase=0.1,
    )
    records: list[TrainingRecord] = []
    result = run_pretraining(
        tiny_bert_dir,
        tiny_corpus,
        tmp_path / "run",
        h,
        reference_corpus=reference,
        cache_dir=cache_dir,
        sink=records.append,
    )
    held_out, forgotten = _losses(records, "eval"), _losses(records, "reference")
    increase = {step: forgotten[step] - forgotten[0] for step in forgotten if step > 0}
    over = sorted(step for step, rise in increase.items() if rise > 0.1)
    within = [step for step in increase if step not in over]
    assert over and within, increase  # by construction: the reference rises from ~0 to ~0.25 nats
    best = min(within, key=lambda step: (held_out[step], step))
    selected = result.selected_checkpoint
    assert selected is not None and result.status == "completed" and result.steps == 8
    assert (selected.step, selected.rejected_over_budget, selected.evaluated_steps) == (
        best,
        over,
        [2, 4, 6, 8],
    )
    assert selected.eval_masked_lm_loss == held_out[best]
    assert selected.reference_loss_increase == pytest.approx(increase[best])
    assert [w.code for w in result.warnings if w.code == FORGETTING_BUDGET_EXCEEDED] == [
        FORGETTING_BUDGET_EXCEEDED
    ]
    # The selected step's checkpoint outlived keep_checkpoints=1, and the model holds its weights.
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"checkpoint-{best}", "checkpoint-8"]
    assert result.model_path is not None
    assert _same_weights(result.model_path, checkpoints / f"checkpoint-{best}")
    assert not _same_weights(result.model_path, checkpoints / "checkpoint-8")
    manifest = ModelManifest.model_validate_json((result.model_path / MODEL_MANIFEST).read_text())
    assert manifest.selected_checkpoint == selected
    assert json.loads((tmp_path / "run" / "result.json").read_text())["selected_checkpoint"]["step"] == best
    # A checkpoint was written each time a step became the selection (step 0 first: a budget's fallback
    # until a trained step meets it), besides the final one; rotation removed those no longer needed.
    saved = [r.step for r in records if isinstance(r, CheckpointSaved)]
    improving = [s for s in within if all(held_out[s] < held_out[t] for t in within if t < s)]
    assert saved == sorted({0, *improving, 8})
    # cosine decaying to 10% of the peak: transformers' cosine_with_min_lr, step by step.
    expected = _transformers_schedule("cosine_with_min_lr", h, min_lr_rate=0.1)
    assert _learning_rates(records) == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(_transformers_schedule("linear", h), rel=1e-3)


@pytest.mark.slow  # trains the tiny BERT (6 steps)
def test_early_stopping_ends_a_run_that_stops_improving_and_no_step_within_budget_exports_step_0(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, tokenizer: Any, cache_dir: Path
) -> None:
    # The held-out text and the reference are both text the training makes worse at every step.
    eval_corpus = _foreign_text(tmp_path / "eval.txt", tiny_corpus, tokenizer, seed=2)
    reference = _foreign_text(tmp_path / "reference.txt", tiny_corpus, tokenizer, seed=3)
    h = tiny_run_hyperparameters(
        max_steps=20,
        learning_rate=2e-2,
        warmup_ratio=0.05,  # one step
        lr_scheduler="constant_with_warmup",
        eval_every_steps=3,
        checkpoint_every_steps=0,
        keep_checkpoints=1,
        eval_documents=None,
        early_stopping_patience=2,
        max_reference_loss_increase=0.0,
    )
    records: list[TrainingRecord] = []
    out = tmp_path / "run"

    def run() -> TrainingResult:
        return run_pretraining(
            tiny_bert_dir,
            tiny_corpus,
            out,
            h,
            eval_corpus=eval_corpus,
            reference_corpus=reference,
            cache_dir=cache_dir,
            sink=records.append,
        )

    result = run()
    held_out, forgotten = _losses(records, "eval"), _losses(records, "reference")
    best, since, stop = math.inf, 0, None
    for step in sorted(held_out)[1:]:  # step 0 does not count
        best, since = (held_out[step], 0) if held_out[step] < best else (best, since + 1)
        if since == 2:
            stop = step
            break
    assert stop == 9, held_out  # by construction: the held-out loss rises at every step
    assert result.status == "completed" and result.steps == 9 and result.max_steps == 20
    assert result.stopped_early is not None
    stopped = result.stopped_early
    assert (stopped.step, stopped.best_step, stopped.patience) == (9, 3, 2)
    assert any(isinstance(r, LogLine) and r.message.startswith("stopping early at step 9") for r in records)
    assert max(r.step for r in records if isinstance(r, Progress)) == 9
    # Every trained step forgot more than the budget of 0: step 0's weights (the base's) are the model.
    assert all(forgotten[step] > forgotten[0] for step in (3, 6, 9)), forgotten
    selected = result.selected_checkpoint
    assert selected is not None and (selected.step, selected.rejected_over_budget) == (0, [3, 6, 9])
    assert NO_CHECKPOINT_WITHIN_BUDGET in [w.code for w in result.warnings]
    assert result.model_path is not None and _same_weights(result.model_path, tiny_bert_dir)
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-0", "checkpoint-9"]
    # The learning rate of constant_with_warmup: transformers' own, step by step.
    expected = _transformers_schedule("constant_with_warmup", h)
    assert _learning_rates(records) == pytest.approx({s: expected[s] for s in range(1, 10)}, rel=1e-6)

    # Interrupted after the early stop's checkpoint, before the export: the run finishes, trains no more.
    shutil.rmtree(out / "model")
    (out / "result.json").unlink()
    records.clear()
    again = run()
    assert again.steps == 9 and again.stopped_early == result.stopped_early
    assert again.selected_checkpoint == selected and _same_weights(out / "model", tiny_bert_dir)
    assert not [r for r in records if isinstance(r, Progress) and r.step > 9]


def test_a_budget_without_a_reference_corpus_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(HyperparameterError) as caught:
        run_pretraining(
            tmp_path / "no-base",
            tmp_path / "no-corpus.txt",
            tmp_path / "run",
            {"max_reference_loss_increase": 0.1},
        )
    assert caught.value.errors[0][0] == "max_reference_loss_increase"
