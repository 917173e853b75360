"""The reported loss is scikit-learn's log_loss of the saved probabilities, confident mistakes
included: a softmax or sigmoid that saturates in float32 costs what sklearn's clip makes it."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss
from torch import nn

from featurestore.runs import load_run, write_run
from featurestore.train import (
    FeatureSource,
    FeatureSplit,
    TrainConfig,
    fit,
    predict,
    summed_loss,
    to_probabilities,
)

torch.set_num_threads(1)
# float32 softmax rows sum to 1 within 1e-7, not sklearn's 1.5e-8: it warns, and computes the same.
pytestmark = pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")
MARGINS = (0.0, 3.0, 25.0, 40.0, 200.0)
"""How far a wrong class's logit lies above the true one: none, mild, p_true 1e-11 (no clip),
4e-18 (below sklearn's clip, 2.2e-16) and an exact 0 in float32."""


def _identity(n: int) -> nn.Linear:
    head = nn.Linear(n, n)
    with torch.no_grad():
        head.weight.copy_(torch.eye(n))
        head.bias.zero_()
    return head


def _multiclass_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(15, 3) features that are the logits of an identity head (5 margins x 3 classes), (15,)."""
    rows, labels = [], []
    for margin in MARGINS:
        for c in range(3):
            x = np.zeros(3, np.float32)
            x[c], x[(c + 1) % 3] = 1.0, 1.0 + margin
            rows.append(x)
            labels.append(c)
    return np.stack(rows), np.array(labels)


def _multiclass_source() -> FeatureSource:
    x, y = _multiclass_arrays()
    return FeatureSource.from_arrays(
        {s: x for s in ("train", "val", "test")}, {s: y for s in ("train", "val", "test")},
        class_names=("a", "b", "c"), positive_index=2, batch_size=4, standardize=False,
    )  # fmt: skip


def test_multiclass_loss_equals_sklearn_on_the_probabilities_returned() -> None:
    head = _identity(3)
    p, y, loss = predict(head, _multiclass_source(), "test")
    assert p.min() == 0.0 and np.isfinite(loss)  # a float32 softmax underflowed
    assert loss == pytest.approx(log_loss(y, p, labels=[0, 1, 2]), rel=1e-12)
    # The history's loss, from the logits, is capped where sklearn clips: the same figure.
    logits = head(torch.as_tensor(_multiclass_arrays()[0])).detach()
    from_logits = summed_loss(logits, torch.as_tensor(y), "multiclass") / len(y)
    assert from_logits == pytest.approx(loss, rel=1e-5)


def test_multilabel_loss_equals_sklearn_per_image_over_observed_findings() -> None:
    margins = np.array([0.5, -3.0, 25.0, -40.0, 200.0, -200.0], np.float32)
    x = np.stack([margins, -margins[::-1]], 1)  # (6, 2) logits of an identity head
    t = np.array([[0, 1], [1, 1], [0, np.nan], [1, 0], [0, 1], [np.nan, np.nan]], np.float64)
    split = FeatureSplit(x, np.zeros(6, np.int64), [f"k{i}" for i in range(6)],
                         [f"p{i}" for i in range(6)], targets=t)  # fmt: skip
    splits = dict.fromkeys(("train", "val", "test"), split)
    names = ("Effusion", "Mass")
    src = FeatureSource(splits, class_names=names, positive_index=0, standardize=False)
    head = _identity(2)
    p, _, loss = predict(head, src, "test")
    observed = ~np.isnan(t)
    reference = [
        log_loss(t[i, observed[i]], p[i, observed[i]], labels=[0, 1])
        for i in range(6)
        if observed[i].any()
    ]
    assert np.isfinite(loss) and loss == pytest.approx(np.mean(reference), rel=1e-12)
    logits = head(torch.as_tensor(x)).detach()
    assert torch.equal(to_probabilities(logits, "multilabel").double(), torch.as_tensor(p))


def test_a_multiclass_run_records_the_loss_sklearn_recomputes_from_predictions_csv(
    tmp_path: Path,
) -> None:
    config = TrainConfig(epochs=1, lr=1e-12, batch_size=4, patience=1, device="cpu")
    torch.manual_seed(0)
    result = fit(_identity(3), _multiclass_source(), replace(config, weight_decay=0.0))
    doc = {**asdict(config), "mode": "frozen", "model": "toy", "class_names": ["a", "b", "c"],
           "positive_index": 2}  # fmt: skip
    run = load_run(write_run(tmp_path, model="toy", mode="frozen", config=doc, result=result))
    for split in ("val", "test"):
        rows = run.split_predictions(split)
        expected = log_loss(rows["label"], rows["probabilities"], labels=[0, 1, 2])
        assert expected > 10  # confident mistakes dominate: the clip matters
        assert run.metrics[split]["argmax"]["loss"] == pytest.approx(expected, rel=1e-12)
