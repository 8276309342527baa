"""The spec's one typed definition (pydantic v2), built from the static sections below and the registries.

The sections every study has (`train`, `search`, `confirm`, ...) are written here
as pydantic models. The parts that depend on what is registered are built from
the registries, plug-ins included, whenever those change (`spec_models()`):

* `dataset`: the common keys (`DatasetBase`) plus the entry's `dataset_options(name)`;
* `student` / `teachers`: `family`, `size` plus the family's `family_option_specs(family)`;
* `methods.<name>`: `trials`, `space` (one field per `HParam` of the method, plus
  `lr` and `weight_decay`), `teacher_sizes` for methods with a teacher,
  `confirm_seeds`, and the method's own `spec_options` (TAKD's `assistant_sizes`).

The same models validate a spec (`study.spec.parse`, section by section so every
problem is reported at once) and produce its JSON Schema (`study.spec.schema`).
Models are strict: no string is read as a number, no number as a boolean, NaN and
infinities are refused; an integral float (``3.0``) is read as an integer where an
integer is expected, and a field given as null counts as not given.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model
from pydantic import model_validator
from pydantic_core import PydanticCustomError

from trainables import data as _data
from trainables import models as _models
from trainables.loop import OPTIMIZERS, SCHEDULES
from trainables.methods import HParam, available_methods
from trainables.options import Option, option

from ..ranges import Range

#: hyperparameters every method can search besides its own
COMMON_HPARAMS = {
    "lr": HParam(3e-3, "float", 1e-7, 10.0, log=True, help="learning rate (same bounds as train.lr)"),
    "weight_decay": HParam(5e-4, "float", 0.0, 0.1, help="weight decay"),
}
BUDGETS = ("stratified", "joint")
SCHEDULERS = ("auto", "asha", "none")
SAMPLERS = ("auto", "tpe", "qmc", "gp", "random")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
WEIGHT_FORMATS = ("auto", "state_dict", "torchvision")
#: search seeds stay below this; confirm (and baseline) seeds start there (disjoint, see study.graph)
MAX_SEARCH_SEED = 9_999
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"


def fail(message: str, *at) -> None:
    """Raise a validation problem with our own message (`at`: a path below the field)."""
    raise PydanticCustomError("kdstudy", "{message}", {"message": message, "at": list(at)})


def short(value: Any, limit: int = 60) -> str:
    """A value for an error message, never longer than a line."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _integral(value):
    """3.0 -> 3 where an integer is expected (YAML writes some integers with a dot)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def choices_of(values) -> Any:
    """A Literal of the given values (the allowed words of a field)."""
    return Literal.__getitem__(tuple(values))


Int = Annotated[int, BeforeValidator(_integral)]
Text = Annotated[str, Field(min_length=1)]
#: a model size: an integer or a name, as the family allows (the family's own check decides)
Size = Annotated[Any, WithJsonSchema({"type": ["integer", "string"]})]


class Section(BaseModel):
    """A mapping of the spec: strict, closed (an unknown field is a problem), null means not given."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, protected_namespaces=(),
                              regex_engine="python-re")
    #: a sentence for an unknown field of this name, instead of the list of allowed ones
    extra_hints: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data):
        if isinstance(data, dict):
            known = {f.alias or n for n, f in cls.model_fields.items()}
            return {k: v for k, v in data.items() if v is not None or k not in known}
        return data


# --------------------------------------------------------------------------- the sections every study has


def _milestones(ms: list) -> list:
    if not all(0 < m < 1 for m in ms):
        fail(f"must be a list of fractions of training in (0, 1); got {short(ms)}")
    return ms


class Train(Section):
    """The training recipe every trial shares (methods may fix or search lr and weight_decay)."""

    epochs: Int = Field(10, ge=1, le=10000, description="epochs of training (per generation)")
    batch_size: Int = Field(128, ge=1, le=65536)
    optimizer: choices_of(OPTIMIZERS) = "adamw"
    lr: float = Field(3e-3, ge=1e-7, le=10, description="learning rate")
    weight_decay: float = Field(5e-4, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, le=1)
    nesterov: bool = True
    schedule: choices_of(SCHEDULES) = "onecycle"
    milestones: Optional[Annotated[list[float], AfterValidator(_milestones)]] = Field(
        None, description="step schedule: fractions of training in (0, 1) where the lr is multiplied by gamma")
    gamma: float = Field(0.1, ge=0, le=1)
    grad_clip: Optional[Annotated[float, Field(ge=0)]] = Field(None, description="clip the gradient norm at this value")
    augment: bool = Field(True, description="random crop + flip of image training batches")


class Baseline(Section):
    """The no-KD student: it runs on confirm.seeds with the spec's recipe (and what methods search)."""

    extra_hints: ClassVar[dict[str, str]] = {
        "seeds": "the baseline runs on the confirm seeds (confirm.seeds), paired with every method; "
                 "remove this field"}


class Search(Section):
    budget: choices_of(BUDGETS) = Field(
        "stratified", description="stratified: equal search per teacher size; joint: Optuna picks the size")
    scheduler: choices_of(SCHEDULERS) = Field("auto", description="auto: ASHA when a search has >= 9 trials")
    grace_period: Int = Field(2, ge=1, description="epochs before ASHA may stop a trial")
    max_concurrent: Int = Field(2, ge=1, description="trials in flight per experiment")
    seed: Int = Field(0, ge=0, le=MAX_SEARCH_SEED, description="seed of the search (confirm seeds are disjoint)")
    sampler: choices_of(SAMPLERS) = Field("auto", description="Optuna sampler")
    replicates: Int = Field(1, ge=1, le=100, description="independent repeats of every search")
    seeds_per_trial: Int = Field(1, ge=1, le=100, description="training seeds each search trial averages over")


class Confirm(Section):
    seeds: Int = Field(5, ge=1, le=1000, description="fresh seeds shared by the baseline and every confirm run")
    top_k: Int = Field(2, ge=1, le=100, description="configurations of each search confirmed (chosen on validation)")


class Verdict(Section):
    delta: float = Field(0.5, ge=0, le=100, description="smallest effect of interest, accuracy points")
    level: float = Field(0.95, ge=0.5, le=0.999, description="confidence level")


def _gpu(value: float) -> float:
    if value > 1:
        fail(f"a fraction of one GPU, at most 1 (a trial trains on one GPU; 0.25 packs four trials on it); "
             f"got {short(value)}")
    return value


class Resources(Section):
    cpu: float = Field(1.0, ge=0.01, le=512, description="CPUs per trial")
    gpu: Annotated[float, AfterValidator(_gpu)] = Field(0.0, ge=0, json_schema_extra={"maximum": 1},
                                                        description="fraction of one GPU per trial")
    max_experiments: Optional[Annotated[Int, Field(ge=1)]] = Field(
        None, description="experiments run at once (default: all ready)")


class Runtime(Section):
    device: choices_of(DEVICES) = "auto"
    precision: choices_of(PRECISIONS) = Field(
        "auto", description="fp32: true float32 matmuls; tf32 opts into TF32; bf16 autocast")
    compile: bool = False
    channels_last: Literal["auto", True, False] = "auto"
    checkpoint_every_s: float = Field(30.0, ge=0, le=86400, description="seconds between trial checkpoints")


class Failure(Section):
    max_failures: Int = Field(2, ge=0, le=100, description="retries of a failed trial")


class Report(Section):
    png: bool = Field(True, description="write a PNG of every figure beside report.html")


class MLflow(Section):
    uri: Text = Field(..., description="tracking URI (a local folder, file://, http://...)")
    experiment: Optional[Text] = None


class WandB(Section):
    project: Text = Field(...)
    entity: Optional[Text] = None
    mode: Literal["online", "offline"] = "online"
    group: Optional[Text] = None


class TensorBoardDir(Section):
    dir: Optional[Text] = Field(None, description="log folder (default: inside the study folder)")


def _tensorboard(value):
    if isinstance(value, bool):
        return {} if value else None
    if not isinstance(value, dict):
        fail(f"must be true, false or a mapping {{dir: ...}}; got {short(value)}")
    for key in value:
        if key != "dir":
            fail("unknown field; allowed: dir", key)
    d = value.get("dir")
    if d is not None and (not isinstance(d, str) or not d):
        fail(f"must be a non-empty string, got {short(d)}", "dir")
    return {"dir": d} if d is not None else {}


class Tracking(Section):
    """Experiment trackers the results are also sent to (not study content: never part of an identity)."""

    mlflow: Optional[MLflow] = None
    wandb: Optional[WandB] = None
    tensorboard: Annotated[Any, AfterValidator(_tensorboard), WithJsonSchema(
        {"anyOf": [{"type": "boolean"}, TensorBoardDir.model_json_schema()]})] = None


def _val_fraction(value: float) -> float:
    if value != 0 and not 0.01 <= value <= 0.5:
        fail(f"must be 0 (no validation split) or between 0.01 and 0.5; got {short(value)}")
    return value


class DatasetBase(Section):
    """The keys every dataset has; an entry adds its own (`dataset_options(name)`)."""

    root: Optional[Text] = Field(None, description="folder holding (or receiving) the dataset's files")
    download: bool = Field(False, description="let the loader download missing files (needs a network)")
    val_fraction: Annotated[float, AfterValidator(_val_fraction), WithJsonSchema(
        {"anyOf": [{"const": 0}, {"type": "number", "minimum": 0.01, "maximum": 0.5}]})] = Field(
        0.1, description="validation split carved from train (0: none; selection by the last epoch)")
    split_seed: Int = Field(0, ge=0, description="seed of the validation carve")
    train_subset: Optional[Annotated[Int, Field(ge=10)]] = Field(None, description="train on the first n training samples")


class ModelBase(Section):
    """A model: `family`, `size` and the family's own options."""


def _weights_entry(size, value) -> dict:
    if isinstance(value, str):
        if not value:
            fail("must be a non-empty path", size)
        return {"path": value, "format": "auto"}
    if not isinstance(value, dict):
        fail(f"must be a path or a mapping {{path, key, format}}; got {short(value)}", size)
    for key in value:
        if key not in ("path", "key", "format", "sha256"):
            fail("unknown field; allowed: format, key, path, sha256", size, key)
    path = value.get("path")
    if not isinstance(path, str) or not path:
        fail("is required (the weights file)" if path is None else f"must be a non-empty path, got {short(path)}",
             size, "path")
    out = {"path": path}
    if value.get("key") is not None:
        if not isinstance(value["key"], str) or not value["key"]:
            fail(f"must be a non-empty string, got {short(value['key'])}", size, "key")
        out["key"] = value["key"]
    fmt = value.get("format")
    fmt = "auto" if fmt is None else fmt
    if fmt not in WEIGHT_FORMATS:
        fail(f"must be one of {', '.join(WEIGHT_FORMATS)}; got {short(fmt)}", size, "format")
    out["format"] = fmt
    sha = value.get("sha256")
    if sha is not None:
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            fail(f"must be the file's sha256 (64 lowercase hex digits), got {short(sha)}", size, "sha256")
        out["sha256"] = sha
    return out


def _weights(value: dict) -> dict:
    return {size: _weights_entry(size, v) for size, v in value.items()}


_WEIGHTS_SCHEMA = {"type": "object", "additionalProperties": {"anyOf": [
    {"type": "string", "minLength": 1},
    {"type": "object", "additionalProperties": False, "required": ["path"],
     "properties": {"path": {"type": "string", "minLength": 1}, "key": {"type": "string", "minLength": 1},
                    "format": {"enum": list(WEIGHT_FORMATS)},
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}}]}}


class TeachersBase(Section):
    """The teacher ladder: its sizes, seeds, epochs and epochs kept for ESKD, plus the family's options."""

    sizes: list[Size] = Field(..., description="the ladder: one teacher per size")
    seeds: Int = Field(1, ge=1, le=100, description="teachers trained per size")
    epochs: Optional[Annotated[Int, Field(ge=1)]] = Field(None, description="teacher epochs (default: train.epochs)")
    export_epochs: list[Int] = Field([], description="epochs whose weights are kept (ESKD's early teachers)")
    weights: Optional[Annotated[dict[Any, Any], AfterValidator(_weights), WithJsonSchema(_WEIGHTS_SCHEMA)]] = Field(
        None, description="imported teachers, not trained: {size: path | {path, key, format, sha256}}; "
                          "a state dict saved by torch.save or a torchvision weights file, relative to the "
                          "spec's folder (the study records its sha256)")


class MethodBase(Section):
    """A method's section: its search budget and how many confirm seeds it takes."""

    trials: Int = Field(8, ge=0, le=100000, description="search trials (0: no search; the fixed configuration "
                                                        "is confirmed)")
    confirm_seeds: Optional[Annotated[Int, Field(ge=1, le=1000)]] = Field(
        None, description="the first n of the shared confirm seeds (default: all)")


# --------------------------------------------------------------------------- what the registries declare


def _option_value(name: str, opt: Option):
    def check(value):
        if "integer" in opt.types and "number" not in opt.types:
            value = _integral(value)
        msg = opt.check(name, value)
        if msg:
            fail(msg[len(name) + 1:] if msg.startswith(name + " ") else msg)
        if opt.required and "array" in opt.types and isinstance(value, (list, tuple)) and not value:
            fail("must be a non-empty list")
        return value

    schema = opt.json_schema()
    if opt.required and "array" in opt.types:
        schema = {**schema, "minItems": 1}
    return Annotated[Any, AfterValidator(check), WithJsonSchema(schema)]


def option_fields(options: dict[str, Option], taken=()) -> dict[str, tuple]:
    """Pydantic fields for registry options (by alias: an option may be called anything)."""
    fields = {}
    for i, (name, opt) in enumerate(options.items()):
        if name in taken:
            continue
        default = ... if opt.required else (opt.default if _jsonable(opt.default) else None)
        fields[f"opt_{i}"] = (_option_value(name, opt), Field(default, alias=name, description=opt.help or None))
    return fields


def _jsonable(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str)) or (
        isinstance(value, (list, tuple)) and all(_jsonable(v) for v in value))


def _finite(name: str, value) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        fail(f"{name} must be a finite number, got {short(value)}")


def _check_hp(hp: HParam, name: str, value) -> None:
    """HParam's own check, its message with the value cut to a line."""
    msg = hp.check(name, value)
    if msg:
        try:
            text = repr(value)
        except Exception:  # noqa: BLE001
            text = ""
        fail(msg.replace(text, short(value)) if text and len(text) > 60 else msg)


def space_value(name: str, hp: HParam):
    """A `space` entry: a fixed value, a range {low, high, log} or {choices: [...]} -> the value or a Range."""

    def check(value):
        if isinstance(value, dict):
            return _range(name, hp, value)
        _finite(name, value)
        _check_hp(hp, name, value)
        return value

    return Annotated[Any, AfterValidator(check), WithJsonSchema(hparam_schema(hp))]


def _range(name: str, hp: HParam, val: dict):
    for key in val:
        if key not in ("low", "high", "log", "choices"):
            fail("unknown field; allowed: choices, high, log, low", key)
    if "choices" in val:
        ch = val["choices"]
        if not isinstance(ch, list) or not ch:
            fail("must be a non-empty list", "choices")
        for c in ch:
            _finite(name, c)
            _check_hp(hp, name, c)
        return Range("categorical", choices=tuple(ch))
    if hp.kind == "categorical":
        fail(f"takes choices from {list(hp.choices or ())}, not a range")
    low, high = val.get("low"), val.get("high")
    if low is None or high is None:
        fail("a range needs both low and high (or give choices: [...])")
    for bound in (low, high):
        _finite(name, bound)
        _check_hp(hp, name, bound)
    if not low < high:
        fail(f"low ({short(low)}) must be below high ({short(high)})")
    log = val.get("log", False)
    if log is None:
        log = False
    if not isinstance(log, bool):
        fail(f"must be true or false, got {short(log)}", "log")
    if log and low <= 0:
        fail(f"a log range needs low > 0, got {low}")
    cast = float if hp.kind == "float" else int
    return Range(hp.kind, cast(low), cast(high), log)


def hparam_schema(hp: HParam) -> dict:
    """JSON Schema of one `space` entry of a hyperparameter: a value, a range or a list of choices."""
    if hp.kind == "categorical":
        value = {"enum": list(hp.choices or ())}
        choices = {"type": "object", "additionalProperties": False, "required": ["choices"],
                   "properties": {"choices": {"type": "array", "minItems": 1, "items": value}}}
        return {"description": _hp_help(hp), "anyOf": [value, choices]}
    value = {"type": "integer" if hp.kind == "int" else "number"}
    if hp.low is not None:
        value["minimum"] = hp.low
    if hp.high is not None:
        value["maximum"] = hp.high
    rng = {"type": "object", "additionalProperties": False, "required": ["low", "high"],
           "properties": {"low": value, "high": value, "log": {"type": "boolean"}}}
    choices = {"type": "object", "additionalProperties": False, "required": ["choices"],
               "properties": {"choices": {"type": "array", "minItems": 1, "items": value}}}
    return {"description": _hp_help(hp), "anyOf": [value, rng, choices]}


def _hp_help(hp: HParam) -> str:
    span = f"; range {hp.low}..{hp.high}{' (log)' if hp.log else ''}" if hp.kind != "categorical" else ""
    searched = "" if hp.searched else "; held at its default unless given a range"
    return f"{hp.help or 'hyperparameter'} (default {hp.default!r}{span}{searched})"


# --------------------------------------------------------------------------- registries (plug-ins included)


def family_option_specs(family: str) -> dict[str, Option]:
    """The family's options as `Option`s (the models registry's, or its bare defaults, untyped)."""
    specs = getattr(_models, "family_option_specs", None)
    if specs is not None:
        return dict(specs(family))
    # until the registry describes its options: any value, the family's own check decides
    return {k: v if isinstance(v, Option) else Option(default=v) for k, v in _models.family_options(family).items()}


#: today's entry-specific dataset keys, for a registry that does not describe its options yet
_DATASET_FALLBACK = {
    "num_samples": Option(None, ("integer",), "samples generated (MNIST-1D)", minimum=200),
    "synthetic_size": Option(None, ("integer",), "training images generated (synthetic_image)", minimum=64),
    "data_seed": Option(None, ("integer",), "seed of the generated data (MNIST-1D)", minimum=0),
}


def available_datasets() -> list[str]:
    return list(_data.available_datasets())


def dataset_options(name: str) -> dict[str, Option]:
    """The dataset entry's own options (the data registry's, or today's keys)."""
    specs = getattr(_data, "dataset_options", None)
    if specs is not None:
        return {k: option(v) for k, v in dict(specs(name)).items()}
    return dict(_DATASET_FALLBACK)


def method_spec_options(cls) -> dict[str, Option]:
    """Options a method adds to its spec section (`Method.spec_options`, e.g. TAKD's assistant_sizes)."""
    return {k: option(v) for k, v in (getattr(cls, "spec_options", None) or {}).items()}


def uses_teacher(cls) -> bool:
    return bool(cls.needs_teacher or cls.online_teacher)


@dataclass
class SpecModels:
    """The typed definition for the registries as they are now."""

    root: type[BaseModel]
    datasets: dict[str, type[BaseModel]]
    students: dict[str, type[BaseModel]]
    teachers: dict[str, type[BaseModel]]
    methods: dict[str, type[BaseModel]]
    method_classes: dict[str, type]
    head: type[BaseModel]
    sections: dict[str, type[BaseModel]]


#: the spec's sections that need no registry
SECTIONS = {"train": Train, "baseline": Baseline, "search": Search, "confirm": Confirm, "verdict": Verdict,
            "resources": Resources, "runtime": Runtime, "failure": Failure, "report": Report, "tracking": Tracking}


class Head(Section):
    """The spec's own scalar fields (validated with the sections ignored)."""

    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=NAME_PATTERN)] = Field(
        ..., description="study name: letters, digits, - and _ (results go to <storage>/<name>/)")
    description: Optional[str] = Field(None, description="what the study asks (shown in the report)")
    storage: Text = Field("./kdstudy_results", description="results root: a local path or a URI "
                                                           "(s3://, gs://, file://)")
    plugins: list[Text] = Field([], description="modules (my_lab.kd), .py files or package folders "
                                                "(relative to this spec) to import: methods, families, datasets")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(name))


def _summary(cls, name: str) -> str:
    """The first line of the method's docstring (or its module's): what an editor shows."""
    import sys

    for doc in (cls.__dict__.get("__doc__"), getattr(sys.modules.get(cls.__module__), "__doc__", None)):
        lines = (doc or "").strip().splitlines()
        if lines:
            return lines[0].strip()
    return f"method {name}"


def size_schema(family: str) -> dict:
    """JSON Schema of one size of a family: its type (and minimum) or its closed list of names."""
    out = {**_models.family_size_spec(family).json_schema(), "description": _models.family_sizes_hint(family)}
    names = _models.family_sizes(family)
    if names is not None:
        out.pop("type", None)
        out["enum"] = list(names)
    return out


class _SizeSchema:
    """A family's size schema, computed when a JSON Schema is written (`kdstudy schema`), not when
    the spec models are built: a closed list of names (torchvision's models) is read only then,
    so validating or running a spec never imports a library just to list its names."""

    def __init__(self, family: str):
        self.family = family

    def __get_pydantic_json_schema__(self, core_schema, handler):
        return size_schema(self.family)

    def __repr__(self) -> str:
        return f"_SizeSchema({self.family!r})"


def _union(models: list, tag: str):
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator=tag)]


def _build(fingerprint) -> SpecModels:
    datasets, students, teachers, methods = {}, {}, {}, {}
    for name in available_datasets():
        opts = option_fields(dataset_options(name), taken=set(DatasetBase.model_fields) | {"name"})
        datasets[name] = create_model(f"Dataset_{_safe(name)}", __base__=DatasetBase, __doc__=f"dataset {name}",
                                      name=(Literal[name], Field(...)), **opts)
    for fam in _models.available_families():
        hint = _models.family_sizes_hint(fam)
        opts = family_option_specs(fam)
        students[fam] = create_model(
            f"Model_{_safe(fam)}", __base__=ModelBase, __doc__=f"a {fam} model",
            family=(Literal[fam], Field(...)),
            size=(Annotated[Any, _SizeSchema(fam)], Field(..., description=hint)),
            **option_fields(opts, taken={"family", "size"}))
        teachers[fam] = create_model(
            f"Teachers_{_safe(fam)}", __base__=TeachersBase, __doc__=f"a ladder of {fam} teachers ({hint})",
            family=(Literal[fam], Field(...)),
            sizes=(list[Annotated[Any, _SizeSchema(fam)]],
                   Field(..., description="the ladder: one teacher per size")),
            **option_fields(opts, taken=set(TeachersBase.model_fields) | {"family", "size"}))
    classes = available_methods()
    for name, cls in classes.items():
        params = {**COMMON_HPARAMS, **cls.hparams}
        space = create_model(
            f"Space_{_safe(name)}", __base__=Section,
            __doc__=f"{name}'s parameters: a value fixes one; {{low, high, log}} or {{choices: [...]}} searches it",
            **{f"hp_{i}": (space_value(p, hp), Field(None, alias=p)) for i, (p, hp) in enumerate(params.items())})
        fields: dict[str, tuple] = {"space": (Optional[space], Field(None, description=space.__doc__))}
        if uses_teacher(cls):
            fields["teacher_sizes"] = (Optional[Annotated[list[Size], Field(min_length=1)]], Field(
                None, description="teacher sizes this method distils from (default: the whole ladder)"))
        fields.update(option_fields(method_spec_options(cls), taken=set(MethodBase.model_fields) | set(fields)))
        hints = {} if uses_teacher(cls) else {"teacher_sizes": f"method {name} uses no teacher"}
        model = create_model(f"Method_{_safe(name)}", __base__=MethodBase, __doc__=_summary(cls, name), **fields)
        model.extra_hints = hints
        methods[name] = model
    methods_model = create_model(
        "Methods", __base__=Section, __doc__="the methods studied (may be empty: the teachers and the baseline)",
        **{f"m_{i}": (Optional[m], Field(None, alias=name))
           for i, (name, m) in enumerate(methods.items())})
    root = create_model(
        "KdstudySpec", __base__=Section, __doc__="a kdstudy study spec",
        **{k: (f.annotation, f) for k, f in Head.model_fields.items()},
        dataset=(_union(list(datasets.values()), "name"), Field(...)),
        student=(_union(list(students.values()), "family"), Field(...)),
        teachers=(Optional[_union(list(teachers.values()), "family")], Field(None)),
        methods=(methods_model, Field(...)),
        **{k: (Optional[m], Field(None, description=(m.__doc__ or "").strip() or None)) for k, m in SECTIONS.items()})
    return SpecModels(root, datasets, students, teachers, methods, classes, Head, dict(SECTIONS))


_CACHE: dict = {}


def _fingerprint():
    fams = tuple((f, repr(sorted(family_option_specs(f).items())), _models.family_sizes_hint(f))
                 for f in _models.available_families())
    dsets = tuple((d, repr(sorted(dataset_options(d).items()))) for d in available_datasets())
    meths = tuple((n, id(c), repr(sorted(c.hparams.items())), repr(sorted(method_spec_options(c).items())))
                  for n, c in available_methods().items())
    return fams, dsets, meths


def spec_models() -> SpecModels:
    """The typed definition for what is registered now (rebuilt when a plug-in registers something)."""
    key = _fingerprint()
    models = _CACHE.get(key)
    if models is None:
        _CACHE.clear()
        models = _CACHE[key] = _build(key)
    return models
