"""Opening a dataset: `--data` resolved to a folder, CSV or npz, read, checked and carved."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from featurestore.config import KERMANY_DIR, SYNTHETIC_DIR
from featurestore.data import synth
from featurestore.data.manifest import (
    SPLITS,
    Manifest,
    carve_validation,
)
from featurestore.data.multilabel import (
    UncertainPolicy,
    is_chexpert_folder,
    is_multilabel_csv,
    is_nih_folder,
    read_chexpert,
    read_multilabel_csv,
    read_nih,
)
from featurestore.data.readers import read_csv, read_folder, read_npz
from featurestore.data.synth_multilabel import (
    SYNTHETIC_MULTILABEL_DIR,
    generate_synthetic_multilabel,
)
from featurestore.data.tasks import SYNTHETIC_MULTICLASS_DIR, LabelScheme, apply_label_scheme
from featurestore.errors import XrayError


def load_manifest(
    path: Path,
    *,
    val_min: int = 100,
    val_fraction: float = 0.1,
    seed: int = 0,
    labels: LabelScheme | str = LabelScheme.as_given,
    uncertain: UncertainPolicy | str = UncertainPolicy.ignore,
    evaluation_only: bool = False,
) -> Manifest:
    """Read a folder, .csv or .npz dataset, relabel it by `labels` (`tasks.LabelScheme`), then
    carve a validation set when val is too small.

    `evaluation_only`: the dataset is only scored (external validation), so its splits are taken
    as they are: no validation carve out of train, and no check that train holds every class.

    Multi-label layouts are recognised by their files: a folder with `Data_Entry_2017*.csv`
    (NIH ChestX-ray14), a folder with `train.csv` and `valid.csv` (CheXpert), a CSV with
    `path,split` and finding columns but no `label` column. `uncertain` decides what their
    uncertain (-1) labels become (`multilabel.UncertainPolicy`). `labels` may also be the
    `uncertain-<policy>` scheme a multi-label store records.
    """
    path = Path(path)
    scheme = str(getattr(labels, "value", labels))
    if scheme.startswith("uncertain-"):  # recorded by a multi-label store
        uncertain, labels = scheme.removeprefix("uncertain-"), LabelScheme.as_given
    UncertainPolicy(uncertain)  # unknown policies fail here, whatever the layout
    if path.is_dir() and is_nih_folder(path):
        manifest = read_nih(path)
    elif path.is_dir() and is_chexpert_folder(path):
        manifest = read_chexpert(path, uncertain=uncertain)
    elif path.is_dir():
        manifest = read_folder(path)
    elif path.suffix.lower() == ".csv" and is_multilabel_csv(path):
        manifest = read_multilabel_csv(path, uncertain=uncertain)
    elif path.suffix.lower() == ".csv":
        manifest = read_csv(path)
    elif path.suffix.lower() == ".npz":
        manifest = read_npz(path)
    elif not path.exists():
        raise XrayError(f"dataset {path} does not exist: pass --data with a folder, .csv or .npz")
    else:
        raise XrayError(f"{path}: unsupported dataset (use a folder, a .csv manifest or a .npz)")
    if manifest.task == "multilabel":
        if LabelScheme(labels) is not LabelScheme.as_given:
            raise XrayError(f"--labels {LabelScheme(labels).value} is for Kermany folders, "
                            f"not the multi-label dataset {path}")  # fmt: skip
    else:
        manifest = apply_label_scheme(manifest, labels)
    if evaluation_only:
        return manifest
    if manifest.task != "multilabel":
        check_labels_in_train(manifest, path)
    return carve_validation(manifest, fraction=val_fraction, min_val=val_min, seed=seed)


def check_labels_in_train(m: Manifest, path: Path) -> None:
    """Refuse a class seen in val/test but never in train (a typo or an unknown label)."""
    if not m.split("train"):
        return  # an evaluation-only dataset: there is no training set to compare against
    in_train = {r.label for r in m.split("train")}
    for label, name in enumerate(m.class_names):
        if label in in_train:
            continue
        where = sorted({r.split for r in m.records if r.label == label}, key=SPLITS.index)
        raise XrayError(
            f"{path}: label {name!r} appears in {'/'.join(where)} but never in train, so no "
            f"model can learn it; fix the label or add train images of it"
        )


def resolve_data_dir(
    data: Path | None, *, env: str | None, notice: Callable[[str], None], task: str = "binary"
) -> Path:
    """--data, else $XRAY_DATA, else data/chest_xray if present, else data/synthetic (generated).

    `task="multiclass"` generates the three-class synthetic set in data/synthetic-3class
    instead (read with `--labels kermany3`, like the real Kermany data); `task="multilabel"`
    the multi-label set in data/synthetic-multilabel and returns its labels.csv.
    """
    for given, origin in ((data, "--data"), (Path(env) if env else None, "$XRAY_DATA")):
        if given is not None:
            if not given.exists():
                raise XrayError(f"{origin} {given} does not exist")
            return given
    if KERMANY_DIR.exists():
        return KERMANY_DIR
    if task == "multilabel":
        labels_csv = SYNTHETIC_MULTILABEL_DIR / "labels.csv"
        if not labels_csv.is_file():
            notice(
                "no dataset given: generating the built-in multi-label synthetic dataset in "
                f"{SYNTHETIC_MULTILABEL_DIR}"
            )
            generate_synthetic_multilabel(SYNTHETIC_MULTILABEL_DIR)
        return labels_csv
    if task == "multiclass":
        if not (SYNTHETIC_MULTICLASS_DIR / "train").is_dir():
            notice(
                "no dataset given: generating the built-in three-class synthetic dataset in "
                f"{SYNTHETIC_MULTICLASS_DIR}"
            )
            synth.generate_synthetic(SYNTHETIC_MULTICLASS_DIR, task="multiclass")
        return SYNTHETIC_MULTICLASS_DIR
    if not (SYNTHETIC_DIR / "train").is_dir():
        notice(f"no dataset given: generating the built-in synthetic dataset in {SYNTHETIC_DIR}")
        synth.generate_synthetic(SYNTHETIC_DIR)
    return SYNTHETIC_DIR
