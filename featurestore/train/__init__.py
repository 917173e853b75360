"""Stage 2, training: batch sources (cached features or streamed images), the one trainer
(`fit`), evaluation on val/test, checkpoints, and the two modes that drive it: frozen
(`fit_heads`, behind `xray fit-head`, with batched head sweeps) and fine-tune (`finetune`).
"""

from __future__ import annotations

from featurestore.config import MONITORS, TrainConfig
from featurestore.train.checkpoints import (
    CHECKPOINT_FORMAT,
    LoopState,
    resume,
    save_checkpoint,
)
from featurestore.train.evaluation import (
    FitResult,
    SplitPredictions,
    conclude,
    evaluate,
    predict,
)
from featurestore.train.finetune import (
    finetune,
    manifest_train_subset,
)
from featurestore.train.frozen import (
    fit_head_on_store,
    fit_head_on_stores,
    fit_heads,
    one_thread_on_cpu,
    open_checked_store,
    select_stores,
)
from featurestore.train.head_fit import (
    GradientHead,
    HeadTrainer,
    LogRegHead,
    head_trainer,
)
from featurestore.train.image_cache import (
    DecodedCache,
)
from featurestore.train.image_source import (
    DEFAULT_CACHE_MB,
    ImageItem,
    ImageSource,
    collate_images,
    radiograph_augmentation,
    seed_worker,
)
from featurestore.train.logreg import LOGREG_CS, LogregFit, fit_logreg
from featurestore.train.loop import (
    EPOCH_HEADER,
    VERBOSE_ENV,
    fit,
    format_epoch,
    selection_monitor,
    train_one_epoch,
)
from featurestore.train.objectives import (
    MaskedBCEWithLogits,
    label_pos_weights,
    multilabel_summary,
    source_task,
    summed_loss,
    to_probabilities,
)
from featurestore.train.optim import (
    class_weights,
    lr_factor,
    make_optimizer,
    make_scheduler,
)
from featurestore.train.sources import (
    FeatureSource,
    FeatureSplit,
    Source,
    drop_lonely_last,
    epoch_generator,
    steps_for,
)
from featurestore.train.sweep import (
    SWEEP_COLUMNS,
    SweepHead,
    SweepResult,
    fit_sweep,
    sweep_files,
    write_sweep_csv,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_CACHE_MB",
    "EPOCH_HEADER",
    "LOGREG_CS",
    "MONITORS",
    "SWEEP_COLUMNS",
    "VERBOSE_ENV",
    "DecodedCache",
    "FeatureSource",
    "FeatureSplit",
    "FitResult",
    "GradientHead",
    "HeadTrainer",
    "ImageItem",
    "ImageSource",
    "LogRegHead",
    "LogregFit",
    "LoopState",
    "MaskedBCEWithLogits",
    "Source",
    "SplitPredictions",
    "SweepHead",
    "SweepResult",
    "TrainConfig",
    "class_weights",
    "collate_images",
    "conclude",
    "drop_lonely_last",
    "epoch_generator",
    "evaluate",
    "finetune",
    "fit",
    "fit_head_on_store",
    "fit_head_on_stores",
    "fit_heads",
    "fit_logreg",
    "fit_sweep",
    "format_epoch",
    "head_trainer",
    "label_pos_weights",
    "lr_factor",
    "make_optimizer",
    "make_scheduler",
    "manifest_train_subset",
    "multilabel_summary",
    "one_thread_on_cpu",
    "open_checked_store",
    "predict",
    "radiograph_augmentation",
    "resume",
    "save_checkpoint",
    "seed_worker",
    "select_stores",
    "selection_monitor",
    "source_task",
    "steps_for",
    "summed_loss",
    "sweep_files",
    "to_probabilities",
    "train_one_epoch",
    "write_sweep_csv",
]
