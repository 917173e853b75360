"""The Task object: decided once from the labels, read back from records, one decision rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featurestore.errors import XrayError
from featurestore.tasks import MULTICLASS_RULE, Task


def test_the_task_follows_from_the_labels_as_type_of_target_does():
    from sklearn.utils.multiclass import type_of_target

    binary = Task.from_classes(["NORMAL", "PNEUMONIA"])
    three = Task.from_classes(["NORMAL", "BACTERIAL", "VIRAL"])
    findings = Task.from_classes(["Effusion", "Edema"], multilabel=True)
    assert (binary.kind, binary.positive_class) == ("binary", "PNEUMONIA")
    assert type_of_target(np.array([0, 1, 1])) == binary.kind
    assert type_of_target(np.array([0, 1, 2])) == three.kind
    assert type_of_target(np.array([[0, 1], [1, 1]])) == "multilabel-indicator"
    assert findings.multilabel and findings.n_outputs == 2
    with pytest.raises(XrayError, match="at least two"):
        Task.from_classes(["NORMAL"])


def test_a_record_reads_back_as_the_same_task_and_old_records_are_inferred():
    for task in (
        Task.from_classes(["a", "b"]),
        Task.from_classes(["a", "b", "c"]),
        Task.from_classes(["x", "y", "z"], multilabel=True),
    ):
        assert Task.from_record(task.as_record()) == task
    old = Task.from_record({"class_names": ["NORMAL", "PNEUMONIA"], "positive_index": 1})
    assert old.binary
    assert Task.from_record({"class_names": ["a", "b", "c"]}).multiclass
    with pytest.raises(XrayError, match="unknown task"):
        Task.from_record({"task": "regression", "class_names": ["a", "b"]})


def test_each_task_decides_by_its_own_rule():
    p2 = np.array([[0.7, 0.3], [0.2, 0.8]])
    assert Task.from_classes(["N", "P"]).decide(p2, 0.5).tolist() == [0, 1]
    assert Task.from_classes(["P", "N"], positive_index=0).decide(p2, 0.5).tolist() == [0, 1]
    p3 = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    three = Task.from_classes(["a", "b", "c"])
    assert three.decide(p3, None).tolist() == [1, 0]
    with pytest.raises(XrayError, match="argmax"):
        three.decide(p3, 0.5)
    assert not three.takes_threshold_policy and three.decision_rule == MULTICLASS_RULE
    labels = Task.from_classes(["x", "y", "z"], multilabel=True)
    assert labels.decide(p3, [0.1, 0.6, 0.3]).tolist() == [[1, 0, 1], [1, 0, 1]]


def test_probabilities_are_softmax_over_classes_and_sigmoid_per_finding():
    logits = torch.tensor([[0.0, 1.0, -1.0]])
    assert torch.allclose(
        Task.from_classes(["a", "b", "c"]).probabilities(logits).sum(1), torch.ones(1)
    )
    sig = Task.from_classes(["a", "b", "c"], multilabel=True).probabilities(logits)
    assert torch.allclose(sig, torch.sigmoid(logits))
