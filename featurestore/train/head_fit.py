"""Heads on cached features behind one interface: `fit(source, config) -> FitResult`.

The frozen mode asks `head_trainer(kind, ...)` for a trainer and calls `fit`; it never needs to
know how a head learns. Gradient heads (linear, MLP) go through the one trainer (`loop.fit`);
the logistic-regression head fits scikit-learn models over a grid of C and keeps the best on
validation. Either way the threshold is chosen on validation and test is scored once
(`evaluation.conclude`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from featurestore.config import TrainConfig
from featurestore.errors import XrayError
from featurestore.train.evaluation import FitResult, conclude
from featurestore.train.loop import fit

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from torch import nn

    from featurestore.train.sources import FeatureSource


class HeadTrainer(Protocol):
    """A head that learns from cached features (N, D) -> logits (N, C)."""

    kind: str
    module: nn.Module
    """The head as an nn.Module over standardised features; holds the best weights after fit."""

    def fit(
        self,
        source: FeatureSource,
        config: TrainConfig,
        *,
        progress: Progress | None = None,
        console: Console | None = None,
    ) -> FitResult:
        """Train on `source`'s train split, select on val, score test once."""
        ...

    def record(self) -> dict[str, Any]:
        """What config.json records about this head beyond the TrainConfig."""
        ...


class GradientHead:
    """Linear or MLP head trained by the one trainer (AdamW, early stopping on val)."""

    def __init__(self, kind: str, feature_dim: int, n_classes: int):
        from featurestore.models import build_head

        self.kind = kind
        self.module = build_head(kind, feature_dim, n_classes)

    def fit(
        self,
        source: FeatureSource,
        config: TrainConfig,
        *,
        progress: Progress | None = None,
        console: Console | None = None,
    ) -> FitResult:
        """`loop.fit` on the features; the best epoch's weights end in `module`."""
        return fit(self.module, source, config, run_dir=None, progress=progress, console=console)

    def record(self) -> dict[str, Any]:
        """Nothing beyond the TrainConfig."""
        return {}


class LogRegHead:
    """scikit-learn logistic regression, its C chosen on validation AUC (`models.fit_logreg`).

    Its history has one row per C tried, in the order tried: a `C` column, `lr` empty (NaN).
    """

    kind = "logreg"

    def __init__(self, feature_dim: int, n_classes: int):
        from torch import nn

        self.module: nn.Module = nn.Linear(feature_dim, n_classes)
        self.C: float | None = None
        self.Cs: list[float] = []

    def fit(
        self,
        source: FeatureSource,
        config: TrainConfig,
        *,
        progress: Progress | None = None,
        console: Console | None = None,
    ) -> FitResult:
        """Fit every C on train, keep the best on val, then threshold on val and test once."""
        from featurestore.train.logreg import fit_logreg
        from featurestore.train.loop import selection_monitor

        # fit_logreg keeps the C of the best validation AUC, or of the lowest validation loss
        # when validation has one class (AUC undefined): say so, and record it.
        used, note = selection_monitor("val_auc", source.records("val")[2], source.class_names)
        if console is not None and note is not None:
            console.print(f"[yellow]warning:[/] {note}", highlight=False)
        began = time.perf_counter()
        logreg = fit_logreg(source, seed=config.seed, balanced=config.class_weight == "balanced")
        self.module, self.C = logreg.head, logreg.C
        self.Cs = [r["C"] for r in logreg.history]
        best = next(int(r["epoch"]) for r in logreg.history if r["C"] == logreg.C)
        if console is not None:
            console.print(
                "logreg: swept C (inverse regularisation) over "
                f"{', '.join(f'{c:g}' for c in self.Cs)}; kept C={logreg.C:g} "
                "(best validation AUC)",
                highlight=False,
            )
        return conclude(
            self.module,
            source,
            config,
            best_state={k: v.clone() for k, v in self.module.state_dict().items()},
            history=logreg.history,
            best_epoch=best,
            stopped_early=False,
            seconds_per_epoch=(time.perf_counter() - began) / len(logreg.history),
            selection={"requested": "val_auc", "used": used, "note": note},
        )

    def record(self) -> dict[str, Any]:
        """The C chosen, and what the history's rows mean."""
        return {
            "logreg_C": self.C,
            "logreg_Cs": self.Cs,
            "history_rows": "one per C tried (column C); epoch is the C's index, lr is empty",
        }


def head_trainer(kind: str, feature_dim: int, n_classes: int) -> HeadTrainer:
    """The trainer of a head kind ("linear", "mlp", "logreg").

    Raises:
        XrayError: an unknown kind (listing the known ones).
    """
    from featurestore.config import HEAD_KINDS

    if kind == "logreg":
        return LogRegHead(feature_dim, n_classes)
    if kind in HEAD_KINDS:
        return GradientHead(kind, feature_dim, n_classes)
    raise XrayError(f"unknown --head {kind!r}; choose one of: {', '.join(HEAD_KINDS)}")
