"""Fine-tuning one model with one seed: ``BertForSequenceClassification`` (the pooled [CLS] output, a fresh
linear classifier, cross-entropy), as in the BERT paper's GLUE recipe (Devlin et al. 2019, section 4.1 and
appendix A.3): AdamW with weight decay 0.01 (not on biases and LayerNorm weights), gradients clipped to
norm 1.0, a linear warm-up over ``warmup_ratio`` of the steps and linear decay to 0, a few epochs (more on
a small dataset: at least ``min_train_steps`` optimizer steps).

The seed decides everything random in one fit, and the same seed decides it alike for every model: the
validation examples carved from the training part (stratified), the fresh classifier's (and a missing
pooler's) initial values, dropout, and the order of the training examples in each epoch. After each epoch
the validation loss is measured; the epoch with the lowest one is the model scored on the test examples,
and training stops after ``early_stopping_patience`` epochs without a lower one.

A plain PyTorch loop rather than transformers' ``Trainer``: a comparison runs (models x seeds) fits of a
few dozen steps, where the Trainer's per-fit set-up (Accelerator state, output directory, logging and
checkpoint machinery) costs more than the fit on a small model, and the loop polls for cancellation after
every batch and keeps the best epoch in memory without writing checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from worker.evaluation.encoding import CheckedModel, EncodedExamples, collate, load_under_head
from worker.evaluation.labelled import LabelledExample, stratified_split
from worker.evaluation.settings import EvaluationHyperparameters

__all__ = ["MAX_GRAD_NORM", "FinetuneOutcome", "finetune_and_predict", "no_decay_parameter"]

# Gradients are clipped to this global norm, as in BERT's run_classifier.py (and transformers' Trainer).
MAX_GRAD_NORM = 1.0
# Evaluation batches hold no gradients: larger than training ones.
_PREDICT_BATCH = 64


@dataclass(frozen=True)
class FinetuneOutcome:
    """Predicted label indices of the test examples, and the epochs run (with the one kept, 1-based)."""

    predictions: list[int]
    epochs_trained: int
    best_epoch: int


def no_decay_parameter(name: str) -> bool:
    """Biases and LayerNorm weights get no weight decay (BERT's optimizer, ``exclude_from_weight_decay``)."""
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name


def _validation_indices(label_ids: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(fit, validation) positions: ``fraction`` of each label held out with ``seed``, the shared
    :func:`stratified_split` rule (every label of 2 or more examples on both sides)."""
    if fraction <= 0:
        return list(range(len(label_ids))), []
    # stratified_split works on examples: give it stand-ins carrying the position in ``text``.
    stand_ins = [LabelledExample(text=str(i), label=str(label)) for i, label in enumerate(label_ids)]
    fit, held_out = stratified_split(stand_ins, fraction, seed)
    return [int(e.text) for e in fit], [int(e.text) for e in held_out]


def _batches(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[start : start + size]) for start in range(0, len(indices), size)]


@torch.no_grad()
def _logits(
    model: torch.nn.Module, encoded: EncodedExamples, indices: Sequence[int], device: torch.device
) -> torch.Tensor:
    model.eval()
    parts = [
        model(**collate(encoded, batch, device)).logits.float().cpu()
        for batch in _batches(indices, _PREDICT_BATCH)
    ]
    return torch.cat(parts) if parts else torch.empty(0)


def finetune_and_predict(
    checked: CheckedModel,
    train: EncodedExamples,
    train_labels: Sequence[int],
    test: EncodedExamples,
    num_labels: int,
    seed: int,
    hyperparameters: EvaluationHyperparameters,
    device: torch.device,
    check_cancelled: Callable[[], None],
) -> FinetuneOutcome:
    """Fine-tune ``checked`` on ``train`` (label indices ``train_labels`` in ``[0, num_labels)``) with
    ``seed`` and predict the test examples. ``check_cancelled`` is called after every training batch and
    raises to stop. Raises BaseModelError when the checkpoint cannot be loaded."""
    from transformers import BertForSequenceClassification, get_linear_schedule_with_warmup, set_seed

    h = hyperparameters
    set_seed(seed)  # python, numpy and torch: the fresh head below, dropout, the shuffles
    fit, validation = _validation_indices(train_labels, h.validation_fraction, seed)
    model = load_under_head(BertForSequenceClassification, checked, num_labels=num_labels).to(device)
    labels = torch.tensor(list(train_labels), dtype=torch.long)

    decay = [p for n, p in model.named_parameters() if not no_decay_parameter(n)]
    no_decay = [p for n, p in model.named_parameters() if no_decay_parameter(n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": h.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=h.learning_rate,
    )
    steps_per_epoch = math.ceil(len(fit) / h.batch_size)
    num_epochs = max(h.num_epochs, math.ceil(h.min_train_steps / steps_per_epoch))
    total_steps = steps_per_epoch * num_epochs
    scheduler = get_linear_schedule_with_warmup(
        optimizer, math.ceil(h.warmup_ratio * total_steps), total_steps
    )
    order = torch.Generator().manual_seed(seed)

    best_loss, best_epoch, best_state, stale = math.inf, 0, None, 0
    epochs = 0
    for epoch in range(1, num_epochs + 1):
        model.train()
        permutation = torch.randperm(len(fit), generator=order).tolist()
        for batch in _batches([fit[i] for i in permutation], h.batch_size):
            out = model(**collate(train, batch, device), labels=labels[batch].to(device))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            check_cancelled()
        epochs = epoch
        if not validation:
            continue
        logits = _logits(model, train, validation, device)
        loss = float(torch.nn.functional.cross_entropy(logits, labels[validation]))
        if loss < best_loss:
            best_loss, best_epoch, stale = loss, epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            stale += 1
            if h.early_stopping_patience is not None and stale >= h.early_stopping_patience:
                break
    if best_state is not None and best_epoch != epochs:
        model.load_state_dict(best_state)
    predictions = _logits(model, test, range(len(test)), device).argmax(dim=-1).tolist()
    return FinetuneOutcome(predictions=predictions, epochs_trained=epochs, best_epoch=best_epoch or epochs)
