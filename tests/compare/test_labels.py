"""Run labels tell runs apart; seed groups hold only seeds of one configuration."""

from __future__ import annotations

from typing import Any

from featurestore.compare import run_labels, run_settings, seed_groups


def frozen(size: int = 224, *, seed: int = 0, lr: float = 1e-3, **more: Any) -> dict[str, Any]:
    return {
        "mode": "frozen", "model": "densenet121", "head": "linear", "seed": seed, "lr": lr,
        "epochs": 100, "weights_id": "imagenet", "store": {"image_size": size, "dtype": "float16"},
        "versions": {"torch": "x"}, "trainable_params": 2050, **more,
    }  # fmt: skip


def test_runs_at_two_image_sizes_get_distinct_labels() -> None:
    labels, _ = run_labels([frozen(64), frozen(224)], ["a", "b"])
    assert labels == ["densenet121 frozen/linear 64px", "densenet121 frozen/linear 224px"]


def test_only_differing_settings_show_and_the_seed_only_when_seeds_differ() -> None:
    finetune = {"mode": "finetune", "model": "resnet50", "head": "linear", "seed": 0,
                "image_size": 64, "freeze": "none", "augment": True, "epochs": 2}  # fmt: skip
    labels, _ = run_labels([frozen(64), finetune], ["a", "b"])
    assert labels == ["densenet121 frozen/linear", "resnet50 finetune"]
    labels, config_labels = run_labels([frozen(seed=0), frozen(seed=1)], ["a", "b"])
    assert labels == ["densenet121 frozen/linear s0", "densenet121 frozen/linear s1"]
    assert config_labels == ["densenet121 frozen/linear"] * 2


def test_other_settings_are_not_seeds_and_are_named() -> None:
    """Issue 13.5: other --lr, same seed: two configurations, labelled by the lr."""
    configs = [frozen(lr=1e-3), frozen(lr=1e-2, epochs=5)]
    groups, repeats = seed_groups(configs)
    assert groups == [] and repeats == []
    labels, _ = run_labels(configs, ["a", "b"])
    assert labels == [
        "densenet121 frozen/linear epochs=100 lr=0.001",
        "densenet121 frozen/linear epochs=5 lr=0.01",
    ]


def test_same_command_twice_is_a_repeat_labelled_by_folder() -> None:
    configs = [frozen(), frozen()]
    assert seed_groups(configs) == ([], [[0, 1]])
    labels, _ = run_labels(configs, ["20261128-1", "20261128-2"])
    assert labels[0] != labels[1]
    assert labels[1] == "densenet121 frozen/linear (20261128-2)"


def test_distinct_seeds_of_one_configuration_form_a_group() -> None:
    configs = [frozen(seed=0), frozen(seed=1), frozen(seed=2), frozen(64, seed=0)]
    groups, repeats = seed_groups(configs)
    assert groups == [[0, 1, 2]] and repeats == []


def test_settings_ignore_bookkeeping_and_keep_store_settings() -> None:
    s = run_settings(frozen(64))
    assert s["image_size"] == 64 and s["weights"] == "imagenet" and s["dtype"] == "float16"
    assert "versions" not in s and "trainable_params" not in s and "seed" not in s


def test_a_sweep_run_says_which_member_it_chose_and_its_seeds_still_group() -> None:
    sweep = {"members": 9, "chosen_member": 4}
    a = frozen(seed=0, lr=0.01, weight_decay=0.0, sweep=sweep)
    b = frozen(seed=1, lr=0.001, weight_decay=1e-4, sweep=sweep)
    labels, config_labels = run_labels([a, b], ["a", "b"])
    assert labels == [
        "densenet121 frozen/sweep s0 [chose linear lr=0.01 wd=0]",
        "densenet121 frozen/sweep s1 [chose linear lr=0.001 wd=0.0001]",
    ]
    assert config_labels == ["densenet121 frozen/sweep"] * 2
    assert seed_groups([a, b])[0] == [[0, 1]]


def test_a_multilabel_subset_run_is_labelled_by_its_tag_not_its_rule() -> None:
    """A multi-label subset records how it was drawn (a sentence, the same for every subset of
    the task): bookkeeping, not a setting, so the label stays `... @f0.5`."""
    rule = "multi-label, by patient: patients in a seeded order; first, for each finding ..."
    subset = frozen(subset_tag="f0.5", subset_rule=rule, subset_positives={"Effusion": 3})
    labels, _ = run_labels([frozen(), subset], ["a", "b"])
    assert labels == ["densenet121 frozen/linear", "densenet121 frozen/linear @f0.5"]
