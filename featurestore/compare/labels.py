"""Run labels that tell runs apart, and which runs are seeds of one configuration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from featurestore.runs import run_weights

METRIC_TITLES = {
    "loss": "loss",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1_macro": "F1 (macro)",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "roc_auc": "ROC-AUC",
    "roc_auc_macro": "macro ROC-AUC",
    "recall": "recall",
    "auc": "ROC-AUC",
}
"""How tables and plots title each metric."""

# config.json keys that describe the data, the outcome or bookkeeping, not a setting that
# was chosen: two runs differing only in these are runs of the same configuration.
NOT_SETTINGS = frozenset(
    {
        "versions",
        "class_names",
        "positive_index",
        "positive_class",
        "trainable_params",
        "total_params",
        "class_counts",
        "dataset_fingerprint",
        "dataset_root",
        "store",
        "extraction_seconds",
        "checkpoint",
        "history_rows",
        "logreg_C",
        "carve",
        "preprocessing",
        "resumed",
        "weights_sha256",
        "weights_id",
        "seed",
        # Label-efficiency runs: `subset_tag` (f0.1, k5) is the setting; the subset's size and
        # seed follow from it and the run seed.
        "train_fraction",
        "shots",
        "train_images",
        "train_patients",
        "subset_seed",
        "subset_rule",  # multi-label: how the subset was drawn (a sentence), fixed by the task
    }
)
# Store attributes that are settings of the features a frozen run trained on.
STORE_SETTINGS = ("image_size", "dtype", "pooling", "precision")
# Shown first, in this order; then every other differing setting, by name.
LEAD = ("model", "mode", "head", "freeze", "image_size", "weights")


def run_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's result (seed excluded), from its config.json.

    Frozen runs take image size, feature dtype and the like from their store's attributes;
    weights are the resolved id (`imagenet`, `none`, a file), from the run or its store.
    Values are scalars (str, int, float, bool) so that settings compare and print plainly.
    """
    store = config.get("store") or {}
    out: dict[str, Any] = {
        "model": config.get("model"),
        "mode": config.get("mode"),
        "head": config.get("head"),
        "weights": run_weights(config),
    }
    if config.get("mode") == "finetune":
        out["freeze"] = config.get("freeze", "none")
    evaluation = config.get("evaluation")  # an `xray evaluate` folder: the dataset it scored
    if isinstance(evaluation, dict) and evaluation.get("dataset"):
        out["on"] = str(evaluation["dataset"])
    if isinstance(config.get("sweep"), dict):
        # A sweep chose the head, lr and weight decay on validation: outcomes, not settings
        # (its sweep.csv and config.json say which), so its seeds group as one configuration.
        out["head"] = "sweep"
        out["lr"] = out["weight_decay"] = None
    for key in STORE_SETTINGS:
        if key in store and key not in config:
            out[key] = store[key]
    for key, value in config.items():
        if key in NOT_SETTINGS or key in out:
            continue
        if value is None or isinstance(value, str | int | float | bool):
            out[key] = value
    return out


def _part(key: str, value: Any) -> str:
    """One label part: `64px`, `weights=none`, `lr=0.01`."""
    if key == "image_size":
        return f"{value}px"
    if key == "subset_tag":
        return f"@{value}"  # a label-efficiency subset: @f0.1 of the patients, @k5 shots
    return f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"


def _chosen_member(config: dict[str, Any]) -> str:
    """` [chose linear lr=0.01 wd=0]` for a sweep run (config.json's head, lr and weight decay
    are the chosen member's), "" for any other run: the label says which member won."""
    if not isinstance(config.get("sweep"), dict):
        return ""
    lr, wd = config.get("lr"), config.get("weight_decay")
    parts = [str(config.get("head"))]
    parts += [f"lr={lr:g}"] if isinstance(lr, int | float) else []
    parts += [f"wd={wd:g}"] if isinstance(wd, int | float) else []
    return f" [chose {' '.join(parts)}]"


def _base(settings: dict[str, Any]) -> str:
    """`resnet50 frozen/linear`, `densenet121 finetune`, `resnet18 finetune/freeze=layer2`;
    an evaluation on another dataset always says which: `resnet50 frozen/linear on site_b`."""
    mode = settings.get("mode")
    extra = f"/{settings.get('head')}" if mode == "frozen" else ""
    if mode == "finetune" and settings.get("freeze", "none") != "none":
        extra = f"/freeze={settings['freeze']}"
    where = f" on {settings['on']}" if settings.get("on") else ""
    return f"{settings.get('model')} {mode}{extra}{where}"


def run_labels(
    configs: Sequence[dict[str, Any]], names: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(labels, configuration labels) of runs shown together; every label is unique.

    A label is `model mode[/head]`, then, among the runs sharing that start, each setting
    that differs (image size, weights, learning rate, ...: `64px`, `lr=0.01`) and the seed
    when seeds differ; a sweep run adds the member it chose (`[chose linear lr=0.01 wd=0]`);
    runs still alike (the same command run twice) get their folder name. The configuration
    label is the label without the seed (and the chosen member): what a seed group is called.
    """
    settings = [run_settings(c) for c in configs]
    seeds = [int(c.get("seed", 0)) for c in configs]
    bases = [_base(s) for s in settings]
    config_labels, labels = list(bases), list(bases)
    for base in set(bases):
        members = [i for i, b in enumerate(bases) if b == base]
        keys: list[str] = []
        for i in members:
            keys += [k for k in settings[i] if k not in keys]
        order = [k for k in LEAD if k in keys] + sorted(k for k in keys if k not in LEAD)
        shown = [
            k
            for k in order
            if k not in ("model", "mode", "head", "freeze", "on")
            and len({repr(settings[i].get(k)) for i in members}) > 1
        ]
        with_seed = len({seeds[i] for i in members}) > 1
        for i in members:
            parts = [_part(k, settings[i][k]) for k in shown if k in settings[i]]
            config_labels[i] = " ".join([base, *parts])
            labels[i] = config_labels[i] + (f" s{seeds[i]}" if with_seed else "")
            labels[i] += _chosen_member(configs[i])
    for label in set(labels):
        same = [i for i, x in enumerate(labels) if x == label]
        if len(same) > 1:
            for i in same:
                labels[i] = f"{label} ({names[i]})"
    return labels, config_labels


def seed_groups(
    configs: Sequence[dict[str, Any]],
) -> tuple[list[list[int]], list[list[int]]]:
    """(groups, repeats): indices of runs whose settings are identical except the seed.

    A group has two or more runs with distinct seeds: its spread is seed spread. Runs with
    identical settings *and* seed are repeats (the same command run twice), returned apart:
    their spread says nothing about seeds.
    """
    by_settings: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        by_settings.setdefault(repr(sorted(run_settings(c).items())), []).append(i)
    groups, repeats = [], []
    for members in by_settings.values():
        seeds = [int(configs[i].get("seed", 0)) for i in members]
        if len(members) < 2:
            continue
        if len(set(seeds)) == len(seeds):
            groups.append(members)
        else:
            repeats.append(members)
    return groups, repeats
