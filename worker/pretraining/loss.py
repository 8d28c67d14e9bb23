"""The pre-training loss, and the running sums behind the reported metrics.

:func:`pretraining_loss` is ``BertForPreTraining``'s loss computed cheaply: the encoder runs once, the
MLM head (transform + decoder onto the vocabulary) only at the predicted positions, gathered from the
sequence output, and the NSP classifier on the pooled output. The modules are transformers' own.
:class:`PretrainingLossModel` is that loss as a module's ``forward``, around the ``BertForPreTraining``:
what ``DistributedDataParallel`` wraps, so that its gradient hooks see every forward pass (a loss that
called the model's submodules past the wrapper would leave the gradients unsynchronized).
:class:`LossTotals` adds up what it returns over many batches, on the device, into the metrics of
:mod:`worker.pretraining.records`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from worker.pretraining.masking import IGNORE_INDEX
from worker.pretraining.records import EvalMetrics

__all__ = [
    "LossTotals",
    "PretrainingLoss",
    "PretrainingLossModel",
    "attention_mask_for",
    "gather_positions",
    "mark_dynamic_shapes",
    "pretraining_loss",
    "train_loss",
]

# The (B, L) tensors of a batch: both dimensions vary from batch to batch (dynamic padding to a multiple of 8,
# length-grouped batches, the short last batch of an epoch).
_SEQUENCE_TENSORS = ("input_ids", "attention_mask", "token_type_ids", "labels")


@dataclass
class PretrainingLoss:
    """The loss of one batch and the (detached) sums behind the metrics.

    ``loss`` carries the graph. ``masked_lm_loss`` / ``next_sentence_loss`` are this batch's means
    (``next_sentence_loss`` is None when NSP is off). The ``*_sum``, ``*_correct`` and ``*_count``
    tensors are detached and summable across batches for token-weighted averages. Shapes: all scalars.
    """

    loss: torch.Tensor
    masked_lm_loss: torch.Tensor
    next_sentence_loss: torch.Tensor | None
    masked_lm_loss_sum: torch.Tensor
    masked_lm_correct: torch.Tensor
    masked_lm_count: torch.Tensor
    next_sentence_loss_sum: torch.Tensor | None
    next_sentence_correct: torch.Tensor | None
    next_sentence_count: torch.Tensor | None


def gather_positions(sequence_output: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, L, H) gathered at (B, P) positions -> (B, P, H)."""
    index = positions.unsqueeze(-1).expand(-1, -1, sequence_output.size(-1))
    return torch.gather(sequence_output, 1, index)


def attention_mask_for(model: Any, attention_mask: torch.Tensor) -> torch.Tensor:
    """The (B, L) padding mask as the model's attention takes it. For SDPA, the (B, 1, 1, L) boolean mask
    that transformers would build from it (a key is attended to where it is not padding), built here: given
    the 2-D mask, transformers reads on the host whether any token is padded, to leave the mask out when none
    is, which waits for the device at every forward pass of an eager model (compiled, it always builds the
    mask). Other attention implementations get the 2-D mask."""
    if getattr(getattr(model, "config", None), "_attn_implementation", None) != "sdpa":
        return attention_mask
    return attention_mask[:, None, None, :].bool()


def pretraining_loss(
    model: Any,
    batch: Mapping[str, torch.Tensor],
    *,
    nsp: bool = True,
    masked_lm_normalizer: int | float | torch.Tensor | None = None,
    next_sentence_normalizer: int | float | torch.Tensor | None = None,
) -> PretrainingLoss:
    """BertForPreTraining's loss with the MLM head applied at the predicted positions only.

    ``batch`` needs ``input_ids``, ``attention_mask``, ``token_type_ids``, ``masked_lm_positions`` and
    ``masked_lm_labels`` (B, P; -100 at padded slots) and, with ``nsp``, ``next_sentence_label``.
    The MLM cross-entropy is summed over predicted tokens and divided by ``masked_lm_normalizer``
    (default: this batch's predicted tokens), the NSP one by ``next_sentence_normalizer`` (default: this
    batch's sequences): with the defaults ``loss`` equals the stock ``BertForPreTraining(..., labels=...,
    next_sentence_label=...).loss``; with normalizers counted over all the micro-batches of an optimizer
    step, summing the micro-batch losses gives the token-weighted loss of the whole step.
    """
    outputs = model.bert(
        input_ids=batch["input_ids"],
        attention_mask=attention_mask_for(model, batch["attention_mask"]),
        token_type_ids=batch["token_type_ids"],
        return_dict=True,
    )
    labels = batch["masked_lm_labels"]
    gathered = gather_positions(outputs.last_hidden_state, batch["masked_lm_positions"])
    logits = model.cls.predictions(gathered).float()  # (B, P, V)
    flat_labels = labels.reshape(-1)
    valid = flat_labels != IGNORE_INDEX
    masked_lm_loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), flat_labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    masked_lm_count = valid.sum()
    masked_lm_denominator = (
        masked_lm_count.clamp(min=1) if masked_lm_normalizer is None else masked_lm_normalizer
    )
    masked_lm_loss = masked_lm_loss_sum / masked_lm_denominator
    with torch.no_grad():
        predictions = logits.detach().argmax(-1).reshape(-1)
        masked_lm_correct = ((predictions == flat_labels) & valid).sum()
    loss = masked_lm_loss
    next_sentence_loss = next_sentence_loss_sum = next_sentence_correct = next_sentence_count = None
    if nsp:
        if outputs.pooler_output is None:
            raise ValueError("next-sentence prediction needs the pooler, which this model lacks")
        next_sentence_logits = model.cls.seq_relationship(outputs.pooler_output).float()
        next_sentence_labels = batch["next_sentence_label"].reshape(-1)
        next_sentence_loss_sum = F.cross_entropy(next_sentence_logits, next_sentence_labels, reduction="sum")
        next_sentence_count = torch.full(
            (), next_sentence_labels.numel(), dtype=torch.long, device=next_sentence_logits.device
        )
        next_sentence_denominator = (
            next_sentence_count.clamp(min=1) if next_sentence_normalizer is None else next_sentence_normalizer
        )
        next_sentence_loss = next_sentence_loss_sum / next_sentence_denominator
        with torch.no_grad():
            next_sentence_correct = (next_sentence_logits.detach().argmax(-1) == next_sentence_labels).sum()
        loss = loss + next_sentence_loss
        next_sentence_loss_sum = next_sentence_loss_sum.detach()
    return PretrainingLoss(
        loss=loss,
        masked_lm_loss=masked_lm_loss.detach(),
        next_sentence_loss=None if next_sentence_loss is None else next_sentence_loss.detach(),
        masked_lm_loss_sum=masked_lm_loss_sum.detach(),
        masked_lm_correct=masked_lm_correct,
        masked_lm_count=masked_lm_count,
        next_sentence_loss_sum=next_sentence_loss_sum,
        next_sentence_correct=next_sentence_correct,
        next_sentence_count=next_sentence_count,
    )


class PretrainingLossModel(torch.nn.Module):
    """:func:`pretraining_loss` of ``model`` (a ``BertForPreTraining``, its only submodule, under the name
    ``model``) as a module's forward: ``loss_model(batch, masked_lm_normalizer=...,
    next_sentence_normalizer=...)`` returns the :class:`PretrainingLoss`. Wrap this module,
    not the model, in ``DistributedDataParallel``.

    ``loss``: the loss function (default :func:`pretraining_loss`; tests pass a stand-in). With ``compile``,
    it runs ``torch.compile``d, the batch and sequence dimensions marked dynamic
    (:func:`mark_dynamic_shapes`); a batch of one sequence runs eager (torch would specialize on its size:
    a recompilation).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        nsp: bool = True,
        compile: bool = False,
        loss: Any = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.nsp = nsp
        self.loss = pretraining_loss if loss is None else loss
        self.compiled = torch.compile(self.loss) if compile else None

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        masked_lm_normalizer: int | float | torch.Tensor | None = None,
        next_sentence_normalizer: int | float | torch.Tensor | None = None,
    ) -> PretrainingLoss:
        normalizers = {
            "masked_lm_normalizer": masked_lm_normalizer,
            "next_sentence_normalizer": next_sentence_normalizer,
        }
        if self.compiled is None or batch["input_ids"].shape[0] < 2:
            return self.loss(self.model, batch, nsp=self.nsp, **normalizers)
        mark_dynamic_shapes(batch)
        return self.compiled(self.model, batch, nsp=self.nsp, **normalizers)


def mark_dynamic_shapes(batch: Mapping[str, Any]) -> None:
    """Mark the batch and sequence dimensions of ``batch``'s tensors dynamic for ``torch.compile``: the first
    compilation of :func:`pretraining_loss` is then generic in them, and no later batch length or size
    recompiles it (without the marks, the second shape seen recompiles, and so can the next). The prediction
    width P stays static (``max_predictions_per_seq`` fixes it when compiling). A dimension of size 1 is
    still specialized by torch: keep batches of one sequence away from the compiled function."""
    for name, tensor in batch.items():
        if isinstance(tensor, torch.Tensor) and tensor.dim() >= 1:
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
            if name in _SEQUENCE_TENSORS and tensor.dim() >= 2:
                torch._dynamo.maybe_mark_dynamic(tensor, 1)


def train_loss(terms: Mapping[str, float | None]) -> float:
    """The pre-training loss from :meth:`LossTotals.train_terms`: ``masked_lm_loss`` +
    ``next_sentence_loss`` (the terms that have a value); NaN when none has."""
    present = [v for v in (terms["masked_lm_loss"], terms["next_sentence_loss"]) if v is not None]
    return math.fsum(present) if present else math.nan


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


class LossTotals:
    """Token-weighted sums of the MLM and NSP losses and hits over many batches, and of the real tokens and
    sequences they were computed on, kept on the device (no host sync per batch) and read once by
    :meth:`values`, :meth:`train_terms` or :meth:`eval_metrics`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}

    def _add(self, name: str, value: torch.Tensor | None) -> None:
        if value is None:
            return
        value = value.detach().to(torch.float64)
        current = self._sums.get(name)
        self._sums[name] = value if current is None else current + value

    def add(
        self,
        out: PretrainingLoss,
        *,
        tokens: torch.Tensor | None = None,
        samples: torch.Tensor | None = None,
    ) -> None:
        """Add one batch's sums, and its real ``tokens`` and ``samples`` (sequences), scalar tensors on the
        device."""
        self._add("masked_lm_loss_sum", out.masked_lm_loss_sum)
        self._add("masked_lm_correct", out.masked_lm_correct)
        self._add("masked_lm_count", out.masked_lm_count)
        self._add("next_sentence_loss_sum", out.next_sentence_loss_sum)
        self._add("next_sentence_correct", out.next_sentence_correct)
        self._add("next_sentence_count", out.next_sentence_count)
        self._add("tokens", tokens)
        self._add("samples", samples)

    def merge(self, other: LossTotals, *, where: torch.Tensor | None = None) -> None:
        """Add ``other``'s sums to these, or, with ``where`` (a bool scalar tensor), add them only if it
        holds: decided on the device, so neither way syncs with the host (a sum that is NaN where
        ``where`` is false adds 0)."""
        for name, value in other._sums.items():
            if where is not None:
                value = torch.where(where, value, torch.zeros_like(value))
            self._add(name, value)

    def all_reduce(self) -> None:
        """Sum these sums over the processes of ``torch.distributed``'s default group, in place (every
        process must call it, with the same sums by name: the same steps applied)."""
        if not self._sums:
            return
        names = sorted(self._sums)
        stacked = torch.stack([self._sums[name] for name in names])
        torch.distributed.all_reduce(stacked)
        self._sums = dict(zip(names, stacked.unbind(), strict=True))

    def all_finite(self) -> torch.Tensor:
        """Whether every sum is finite, as a bool tensor on the device (no host sync)."""
        return torch.stack([torch.isfinite(value).all() for value in self._sums.values()]).all()

    def values(self) -> dict[str, float]:
        """The sums by name, read from the device at once (one host sync)."""
        if not self._sums:
            return {}
        names = list(self._sums)
        read = torch.stack([self._sums[name] for name in names]).tolist()
        return dict(zip(names, read, strict=True))

    @property
    def empty(self) -> bool:
        return not self._sums

    @staticmethod
    def _ratio(values: dict[str, float], numerator: str, denominator: str) -> float | None:
        if numerator not in values or not values.get(denominator):
            return None
        return values[numerator] / values[denominator]

    def train_terms(self, values: Mapping[str, float] | None = None) -> dict[str, float | None]:
        """The loss terms of :class:`~worker.pretraining.records.TrainMetrics`: ``masked_lm_loss``,
        ``masked_lm_accuracy``, ``next_sentence_loss``, ``next_sentence_accuracy`` (None where nothing was
        predicted); from ``values`` when the caller already read them (:meth:`values`)."""
        values = dict(self.values() if values is None else values)
        return {
            "masked_lm_loss": self._ratio(values, "masked_lm_loss_sum", "masked_lm_count"),
            "masked_lm_accuracy": self._ratio(values, "masked_lm_correct", "masked_lm_count"),
            "next_sentence_loss": self._ratio(values, "next_sentence_loss_sum", "next_sentence_count"),
            "next_sentence_accuracy": self._ratio(values, "next_sentence_correct", "next_sentence_count"),
        }

    def eval_metrics(self) -> EvalMetrics:
        """The metrics of a whole split, masked-LM ones averaged over predicted tokens."""
        terms = self.train_terms()
        masked_lm_loss = terms["masked_lm_loss"]
        if masked_lm_loss is None:
            raise ValueError("no token was predicted: the split is empty")
        return EvalMetrics(
            masked_lm_loss=masked_lm_loss,
            masked_lm_accuracy=terms["masked_lm_accuracy"] or 0.0,
            perplexity=_perplexity(masked_lm_loss),
            next_sentence_loss=terms["next_sentence_loss"],
            next_sentence_accuracy=terms["next_sentence_accuracy"],
        )
