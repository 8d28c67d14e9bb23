"""The linear probe: how much of a task a model's frozen features already hold.

Features: the attention-mask-weighted mean of the last hidden state (mean pooling over the real tokens,
[CLS] and [SEP]s included, as sentence-transformers pools), computed once per model with the encoder in
eval mode, so they do not depend on the seed. Classifier: scikit-learn's ``LogisticRegression`` (lbfgs,
multinomial, L2) on standardized features, its inverse regularization ``C`` chosen among ``probe_cs``
values log-spaced in [1e-4, 1e4] (``LogisticRegressionCV``'s grid) by cross-validated accuracy over
stratified folds (``GridSearchCV``), then refitted on the whole training part (Alain & Bengio 2016,
"Understanding intermediate layers using linear classifier probes"; the logistic-regression probe of
SentEval, Conneau & Kiela 2018).

What the seed varies: only the assignment of training examples to the cross-validation folds
(``StratifiedKFold(shuffle=True, random_state=seed)``), hence possibly the chosen ``C``. The features and
the lbfgs fit are deterministic, so a probe's sd over seeds is small, often 0: it measures the sensitivity to
the choice of ``C``, not training noise as fine-tuning's sd does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from worker.evaluation.encoding import CheckedModel, EncodedExamples, collate, load_under_head

__all__ = ["mean_pooled_features", "probe_predict"]

_FEATURE_BATCH = 64


@torch.no_grad()
def mean_pooled_features(
    checked: CheckedModel,
    encoded: EncodedExamples,
    device: torch.device,
    check_cancelled: Callable[[], None],
) -> np.ndarray:
    """Features of shape (len(encoded), hidden_size), float64: per example, the mean of the last hidden
    state over its attention mask. ``check_cancelled`` is called after every batch and raises to stop."""
    from transformers import BertModel

    model = load_under_head(BertModel, checked, add_pooling_layer=False).to(device)
    model.eval()
    parts = []
    for start in range(0, len(encoded), _FEATURE_BATCH):
        batch = collate(encoded, range(start, min(start + _FEATURE_BATCH, len(encoded))), device)
        hidden = model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        parts.append(((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).cpu())
        check_cancelled()
    return torch.cat(parts).double().numpy()


def probe_predict(
    train_features: np.ndarray,
    train_labels: Sequence[int],
    test_features: np.ndarray,
    seed: int,
    *,
    folds: int,
    cs: int,
    max_iter: int,
) -> list[int]:
    """Fit the cross-validated logistic regression on the training features (``train_labels``: label
    indices) and predict the test features' label indices. ``folds`` is capped at the smallest label count;
    ValueError when a label has fewer than 2 training examples (no fold can hold it out)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(np.asarray(train_labels))
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        raise ValueError("the probe's cross-validation needs at least 2 training examples of every label")
    splitter = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
    # GridSearchCV over LogisticRegression's C rather than LogisticRegressionCV, whose parameters and
    # fitted attributes change across scikit-learn 1.8 to 1.10; the same grid, folds and refit.
    classifier: Any = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter)),
        {"logisticregression__C": np.logspace(-4, 4, cs)},
        cv=splitter,
        scoring="accuracy",
    )
    classifier.fit(train_features, np.asarray(train_labels))
    return [int(label) for label in classifier.predict(test_features)]
