"""The logreg head for every task: its logits reproduce scikit-learn's probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from test_sweep_tasks import task_source

from featurestore.tasks import TASK_KINDS
from featurestore.train import TrainConfig, fit_logreg, head_trainer

CS = (1e-2, 1.0)


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_logreg_logits_reproduce_sklearn_and_keep_the_best_val_auc(kind: str) -> None:
    source = task_source(kind)
    fitted = fit_logreg(source, Cs=CS)
    x_tr, y_tr = (t.numpy() for t in source.arrays("train"))
    x_val, y_val = (t.numpy() for t in source.arrays("val"))
    with torch.no_grad():
        logits = fitted.head(torch.from_numpy(x_val)).double()
    aucs = []
    for c in CS:
        if kind == "multilabel":
            probs, ref_aucs = [], []
            for k in range(3):
                m = ~np.isnan(y_tr[:, k])
                clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced",
                                         random_state=0).fit(x_tr[m], y_tr[m, k])  # fmt: skip
                probs.append(clf.predict_proba(x_val)[:, 1])
                mv = ~np.isnan(y_val[:, k])
                ref_aucs.append(roc_auc_score(y_val[mv, k], probs[-1][mv]))
            ref, auc = np.stack(probs, 1), float(np.mean(ref_aucs))
            ours = torch.sigmoid(logits).numpy()
        else:
            clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced",
                                     random_state=0).fit(x_tr, y_tr)  # fmt: skip
            ref = clf.predict_proba(x_val)
            if kind == "binary":
                auc = roc_auc_score(y_val == 1, ref[:, 1])
            else:
                auc = roc_auc_score(y_val, ref, multi_class="ovr", average="macro")
            ours = torch.softmax(logits, 1).numpy()
        aucs.append(auc)
        if c == fitted.C:
            np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert CS[int(np.argmax(aucs))] == fitted.C
    assert [r["val_auc"] for r in fitted.history] == pytest.approx(aucs, abs=1e-6)


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_a_logreg_run_is_concluded_for_its_task(kind: str) -> None:
    source = task_source(kind, seed=3)
    trainer = head_trainer("logreg", source.feature_dim, len(source.class_names))
    result = trainer.fit(source, TrainConfig(device="cpu"))
    assert result.task == kind
    assert result.predictions["test"].probabilities.shape[0] == 60
