"""A study file (TOML): its arms and questions, parsed and checked into frozen dataclasses.

Every option an arm takes is a field of the existing config dataclasses (`TrainConfig`,
`FitHeadConfig`, `ExtractConfig`, `FinetuneConfig`, `SweepConfig`): the file restates no
default. A key under `[study]` that is such a field is the default of every arm whose mode has
it; an arm's own key wins. A flat key sets that field in every config of the arm's mode that has
it (`image_size`: extraction and fine-tuning; `precision`: extraction and training); the
`extract` table (`extract.batch_size = 64`) sets the extraction's only.

Nothing here imports torch or touches the disk beyond reading the file: a bad file fails
before anything is written. Every mistake is one `XrayError` line naming the file and the key.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from featurestore.config import (
    CompareConfig,
    ExtractConfig,
    FinetuneConfig,
    FitHeadConfig,
    SweepConfig,
    TrainConfig,
)
from featurestore.errors import XrayError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MODES = ("frozen", "finetune")
ArmKind = Literal["primary", "sweep", "curve"]

# Keys of [study] itself (not arm defaults).
STUDY_KEYS = ("name", "data", "seeds", "out", "cache", "n_boot", "alpha", "bootstrap_seed")
# Keys only an arm (or the defaults) sets outside the config dataclasses.
ARM_KEYS = ("name", "model", "mode", "sweep", "extract")
# Fields the study itself decides: seeds come from [study].seeds, one store per arm.
MANAGED = {"seed", "seeds", "train", "fuse", "model"}
# The label-efficiency fields (FitHeadConfig's), taken by both modes.
CURVE_FIELDS = ("train_fractions", "shots_per_class")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Arm:
    """One kind of run of the study, every option resolved (run once per seed)."""

    name: str
    model: str
    mode: Literal["frozen", "finetune"]
    train: TrainConfig
    """The trainer's settings; the seed is replaced by each of the study's seeds."""
    extract: ExtractConfig | None = None
    """Frozen arms: how the backbone's store is extracted."""
    fit: FitHeadConfig | None = None
    """Frozen arms: the head (kind, pooling, label scheme)."""
    finetune: FinetuneConfig | None = None
    """Fine-tune arms: backbone input, augmentation, freezing."""
    sweep: SweepConfig | None = None
    """A head sweep arm (frozen): this grid trained at once, the member chosen on val kept."""
    train_fractions: tuple[float, ...] = ()
    """Label-efficiency arm: one run per fraction of the train patients (and seed)."""
    shots_per_class: tuple[int, ...] = ()
    """Label-efficiency arm: one run per K images per class (and seed)."""

    @property
    def kind(self) -> ArmKind:
        """ "sweep" and "curve" (label efficiency) arms never enter the primary questions."""
        if self.sweep is not None:
            return "sweep"
        return "curve" if self.train_fractions or self.shots_per_class else "primary"

    @property
    def labels(self) -> str:
        """The label scheme the arm reads the data with."""
        cfg = self.fit if self.fit is not None else self.finetune
        return str(cfg.labels) if cfg is not None else "as-given"

    @property
    def uncertain(self) -> str:
        """The uncertain-label policy of multi-label data."""
        cfg = self.fit if self.fit is not None else self.finetune
        return str(cfg.uncertain) if cfg is not None else "ignore"

    def resolved(self) -> dict[str, Any]:
        """The arm's whole resolved configuration as JSON-able data (what its runs hash)."""
        out: dict[str, Any] = {"model": self.model, "mode": self.mode, "train": asdict(self.train)}
        for key in ("extract", "fit", "finetune", "sweep"):
            value = getattr(self, key)
            out[key] = None if value is None else asdict(value)
        out["train_fractions"] = list(self.train_fractions)
        out["shots_per_class"] = list(self.shots_per_class)
        return out


@dataclass(frozen=True)
class Question:
    """A declared comparison: metric(a) - metric(b), one member of the Holm family."""

    name: str
    a: str
    b: str
    metric: str = "roc_auc"


@dataclass(frozen=True)
class Study:
    """A parsed, checked study file."""

    name: str
    source: str
    """Where it was read from (a path, or `demo` for the built-in file)."""
    text: str
    """The file as written (copied into the study folder)."""
    sha256: str
    data: Path | None
    """None: the default data chain (`--data` default: $XRAY_DATA, data/chest_xray, synthetic)."""
    seeds: tuple[int, ...]
    arms: tuple[Arm, ...]
    questions: tuple[Question, ...]
    out: Path = Path("studies")
    """The study folder is `out/<name>`."""
    cache: Path = Path("cache")
    """Feature stores (shared with `xray extract`)."""
    n_boot: int = CompareConfig.n_boot
    alpha: float = CompareConfig.alpha
    bootstrap_seed: int = CompareConfig.seed

    @property
    def folder(self) -> Path:
        """The study folder: the file, its hash, the ledger of runs, the report."""
        return self.out / self.name

    def arm(self, name: str) -> Arm:
        """The arm called `name` (KeyError when there is none)."""
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(name)


def _fail(source: str, message: str) -> XrayError:
    return XrayError(f"{source}: {message}")


def _hint(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if f.name not in MANAGED}


_TRAIN = _field_types(TrainConfig)
_FIT = {k: v for k, v in _field_types(FitHeadConfig).items() if k not in CURVE_FIELDS}
_EXTRACT = _field_types(ExtractConfig)
_FINETUNE = _field_types(FinetuneConfig)
_CURVE = {k: _field_types(FitHeadConfig)[k] for k in CURVE_FIELDS}
_SWEEP = _field_types(SweepConfig)
_MODE_KEYS = {
    "frozen": {**_TRAIN, **_FIT, **_EXTRACT, **_CURVE},
    "finetune": {**_TRAIN, **_FINETUNE, **_CURVE},
}
_ALL_KEYS = sorted({*STUDY_KEYS, *ARM_KEYS, *_MODE_KEYS["frozen"], *_MODE_KEYS["finetune"]})


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """A TOML value checked against a dataclass field's annotation (lists become tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(value, option, where)
            except XrayError:
                continue
        raise XrayError(f"{where} must be a {_describe(options[0])}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise XrayError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise XrayError(f"{where} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a field type this parser does not know yet
        raise XrayError(f"{where}: unsupported option type {hint}")
    if not ok:
        raise XrayError(f"{where} must be a {_describe(hint)}, got {value!r}")
    return value


def _describe(hint: Any) -> str:
    return {bool: "true/false", int: "whole number", float: "number", str: "string"}.get(
        hint, str(hint)
    )


def _build(cls: type, types_: dict[str, Any], given: Mapping[str, Any], prefix: str = "") -> Any:
    """cls(**defaults with the given fields), values checked; the dataclass's own checks run."""
    kwargs = {k: _coerce(v, types_[k], f"{prefix}{k}") for k, v in given.items() if k in types_}
    return cls(**kwargs)


def _arm(source: str, table: Mapping[str, Any], defaults: Mapping[str, Any], index: int) -> Arm:
    """One [[study.arm]] table, with the [study] defaults of its mode, resolved."""
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(
            source,
            f"arm #{index + 1} needs a name of letters, digits, '.', '_' or '-', got {name!r}",
        )
    where = f"arm {name!r}"
    mode = table.get("mode", defaults.get("mode"))
    if mode is None:
        raise _fail(source, f"{where} needs a mode (frozen or finetune)")
    if mode not in MODES:
        raise _fail(source, f"unknown mode {mode!r} in {where}; choose frozen or finetune")
    valid = _MODE_KEYS[mode]
    for key in table:
        if key in ARM_KEYS or key in valid:
            continue
        if key in _ALL_KEYS:
            raise _fail(source, f"{where} ({mode}) does not take key {key!r}")
        raise _fail(source, f"unknown key {key!r} in {where}{_hint(key, _ALL_KEYS)}")
    # [study] defaults of this mode, then the arm's own keys.
    given = {k: v for k, v in defaults.items() if k in valid or k == "extract"}
    given.update(table)
    model = given.get("model", defaults.get("model"))
    if not isinstance(model, str) or not model:
        raise _fail(source, f"{where} needs a model (a backbone name, see `xray models`)")
    try:
        return _resolve_arm(name, model, mode, given)
    except XrayError as exc:
        raise _fail(source, f"{where}: {exc}") from None


def _resolve_arm(name: str, model: str, mode: str, given: Mapping[str, Any]) -> Arm:
    curve = {k: _coerce(given[k], _CURVE[k], k) for k in CURVE_FIELDS if k in given}
    fractions = tuple(sorted(set(curve.get("train_fractions", ()))))
    shots = tuple(sorted(set(curve.get("shots_per_class", ()))))
    if any(not 0.0 < f <= 1.0 for f in fractions):
        raise XrayError(f"train_fractions must lie in (0, 1], got {list(fractions)}")
    if any(k < 1 for k in shots):
        raise XrayError("shots_per_class must be whole numbers >= 1")
    if fractions and shots:
        raise XrayError("give train_fractions or shots_per_class, not both")
    if mode == "finetune":
        ft_base = FinetuneConfig()
        train = replace(
            ft_base.train,
            **{k: _coerce(v, _TRAIN[k], k) for k, v in given.items() if k in _TRAIN},
        )
        finetune = replace(_build(FinetuneConfig, _FINETUNE, given), model=model, train=train)
        if "extract" in given or "sweep" in given:
            raise XrayError("a finetune arm takes no 'extract' or 'sweep'")
        return Arm(name, model, "finetune", train, finetune=finetune,
                   train_fractions=fractions, shots_per_class=shots)  # fmt: skip
    train = _build(TrainConfig, _TRAIN, given)
    fit = replace(_build(FitHeadConfig, _FIT, given), train=train)
    extract_keys = {k: v for k, v in given.items() if k in _EXTRACT}
    nested = given.get("extract", {})
    if not isinstance(nested, dict):
        raise XrayError("extract must be a table of extraction options")
    for key in nested:
        if key not in _EXTRACT:
            raise XrayError(f"unknown key 'extract.{key}'{_hint(key, _EXTRACT)}")
    extract_keys.update(nested)
    extract = _build(ExtractConfig, _EXTRACT, extract_keys, "extract.")
    if extract.labels != fit.labels or extract.uncertain != fit.uncertain:
        raise XrayError("extract.labels/uncertain must match the arm's")
    sweep = _sweep(given.get("sweep"), fit)
    if sweep is not None and (fractions or shots):
        raise XrayError("a sweep arm cannot also be a label-efficiency arm")
    return Arm(name, model, "frozen", train, extract=extract, fit=fit, sweep=sweep,
               train_fractions=fractions, shots_per_class=shots)  # fmt: skip


def _sweep(value: Any, fit: FitHeadConfig) -> SweepConfig | None:
    """`sweep = "default"` or a table of SweepConfig fields; axes not given keep the arm's."""
    if value is None:
        return None
    if value == "default":
        return SweepConfig()
    if not isinstance(value, dict):
        raise XrayError('sweep must be "default" or a table (lrs, weight_decays, heads)')
    for key in value:
        if key not in _SWEEP:
            raise XrayError(f"unknown key 'sweep.{key}'{_hint(key, _SWEEP)}")
    chosen: dict[str, Any] = {
        "lrs": (fit.train.lr,),
        "weight_decays": (fit.train.weight_decay,),
        "heads": (fit.head,),
    }
    chosen.update({k: _coerce(v, _SWEEP[k], f"sweep.{k}") for k, v in value.items()})
    return SweepConfig(**chosen)


def _question(
    source: str, table: Mapping[str, Any], arms: Mapping[str, Arm], index: int
) -> Question:
    from featurestore.compare.questions import METRIC_NAMES, PER_CLASS_NAMES

    for key in table:
        if key not in ("name", "a", "b", "metric"):
            raise _fail(
                source,
                f"unknown key {key!r} in question #{index + 1}"
                f"{_hint(key, ('name', 'a', 'b', 'metric'))}",
            )
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(source, f"question #{index + 1} needs a name (the question, in words)")
    for side in ("a", "b"):
        arm = table.get(side)
        if not isinstance(arm, str):
            raise _fail(source, f"question {name!r} needs {side} = an arm's name")
        if arm not in arms:
            raise _fail(
                source,
                f"question {name!r}: {side} = {arm!r} is not an arm of the study{_hint(arm, arms)}",
            )
        if arms[arm].kind != "primary":
            raise _fail(
                source,
                f"question {name!r}: arm {arm!r} is a {arms[arm].kind} arm; its runs are "
                "reported as a sweep table or a curve, never as a primary question",
            )
    if table["a"] == table["b"]:
        raise _fail(source, f"question {name!r} compares arm {table['a']!r} with itself")
    metric = table.get("metric", "roc_auc")
    # The task is known once the plan reads the data (`plan.make_plan` checks the metric
    # against it); here a metric must be one some task has.
    per_class = isinstance(metric, str) and metric.split(":", 1)[0] in PER_CLASS_NAMES
    if metric not in METRIC_NAMES and not (per_class and ":" in metric):
        raise _fail(
            source,
            f"question {name!r}: unknown metric {metric!r}{_hint(str(metric), METRIC_NAMES)}; "
            f"choose one of: {', '.join(METRIC_NAMES)}, or <metric>:<class> with metric one "
            f"of {', '.join(PER_CLASS_NAMES)}",
        )
    return Question(name.strip(), table["a"], table["b"], metric)


def parse_study(text: str, *, source: str = "study.toml") -> Study:
    """Parse and check a study file's text; `source` names it in every message.

    Raises:
        XrayError: invalid TOML, an unknown key (with the closest valid one), a missing name,
            model or mode, an unknown mode, a value of the wrong type or out of range (the
            config dataclasses' own checks), a duplicate arm or question, a question naming an
            arm that does not exist or one that is a sweep or curve arm, an unknown metric.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(source, f"not a valid TOML file: {exc}") from None
    for key in doc:
        if key != "study":
            raise _fail(source, f"unknown table {key!r}; everything goes under [study]")
    study = doc.get("study")
    if not isinstance(study, dict):
        raise _fail(source, "no [study] table")
    arm_tables = study.get("arm", [])
    question_tables = study.get("question", [])
    defaults = {k: v for k, v in study.items() if k not in (*STUDY_KEYS, "arm", "question")}
    shared = {*_MODE_KEYS["frozen"], *_MODE_KEYS["finetune"], "model", "mode", "extract", "sweep"}
    for key in defaults:
        if key not in shared:
            raise _fail(source, f"unknown key {key!r} in [study]{_hint(key, _ALL_KEYS)}")
    name = study.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(source, f"[study] needs name = letters, digits, '.', '_' or '-' (got {name!r})")
    seeds = study.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise _fail(source, f"seeds must be a list of distinct whole numbers >= 0, got {seeds!r}")
    if not isinstance(arm_tables, list) or not arm_tables:
        raise _fail(source, "the study has no [[study.arm]]")
    arms: dict[str, Arm] = {}
    for i, table in enumerate(arm_tables):
        arm = _arm(source, table, defaults, i)
        if arm.name in arms:
            raise _fail(source, f"two arms are called {arm.name!r}")
        arms[arm.name] = arm
    questions: list[Question] = []
    for i, table in enumerate(question_tables if isinstance(question_tables, list) else []):
        question = _question(source, table, arms, i)
        if any(q.name == question.name for q in questions):
            raise _fail(source, f"two questions are called {question.name!r}")
        questions.append(question)
    extra = _study_options(source, study)
    return Study(
        name=name,
        source=source,
        text=text,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        seeds=tuple(seeds),
        arms=tuple(arms.values()),
        questions=tuple(questions),
        **extra,
    )


def _study_options(source: str, study: Mapping[str, Any]) -> dict[str, Any]:
    """data, out, cache and the statistics' settings of [study]."""
    out: dict[str, Any] = {"data": None}
    for key in ("data", "out", "cache"):
        if key in study:
            if not isinstance(study[key], str) or not study[key]:
                raise _fail(source, f"[study] {key} must be a path (a string)")
            out[key] = Path(study[key])
    try:
        compare = CompareConfig(
            n_boot=_coerce(study.get("n_boot", CompareConfig.n_boot), int, "n_boot"),
            alpha=_coerce(study.get("alpha", CompareConfig.alpha), float, "alpha"),
            seed=_coerce(study.get("bootstrap_seed", CompareConfig.seed), int, "bootstrap_seed"),
        )
    except XrayError as exc:
        raise _fail(source, f"[study] {exc}") from None
    out.update(n_boot=compare.n_boot, alpha=compare.alpha, bootstrap_seed=compare.seed)
    return out


BUILTIN = ("demo",)


def builtin_text(name: str) -> str:
    """The text of a study file shipped in the package (`demo`)."""
    from importlib.resources import files

    return files("featurestore.study").joinpath(f"{name}.toml").read_text()


def load_study(path: Path | str) -> Study:
    """Read and check a study file; `demo` (not a file here) is the built-in demo study.

    Raises:
        XrayError: the file does not exist or cannot be read, or `parse_study` refuses it.
    """
    given = Path(path)
    if not given.exists() and str(path) in BUILTIN:
        return parse_study(builtin_text(str(path)), source=str(path))
    if not given.is_file():
        raise XrayError(
            f"study file {given} does not exist (the built-in one is `demo`: "
            "`xray study show demo > study.toml`)"
        )
    try:
        text = given.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise XrayError(f"{given}: cannot be read ({exc})") from None
    return parse_study(text, source=str(given))
