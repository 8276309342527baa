"""The study spec: one YAML file, validated completely before Ray starts.

`load_spec(path)` returns a typed `Spec` or raises `SpecError` listing every
problem, each naming the field and what is allowed. Inner code trusts the
`Spec` it gets. An annotated example is `studies/quickstart.yaml`; the
fields are:

    name: str                      study name (letters, digits, - and _)
    storage: str                   results root: a local path or a URI (s3://, gs://, file://)
    dataset: {name, root, download, num_samples, val_fraction, split_seed, train_subset}
             val_fraction: 0.01..0.5 (default 0.1) carves a validation split from the
             training set for selection; 0 trains on the whole training set with NO
             validation split: each trial's result is its last epoch and a search ranks
             trials by *test* accuracy (the protocol of the published CIFAR numbers,
             e.g. RepDistiller's) — choose it knowingly; rows show `selection: last_epoch`
    student: {family, size, ...model options}
    teachers: {family, sizes: [..], seeds, epochs, export_epochs: [..], ...model options}
    train: {epochs, batch_size, optimizer, lr, weight_decay, momentum, nesterov,
            schedule, milestones, gamma, grad_clip, augment}
            augment: random crop + flip of image training batches (default true; the
            TAKD authors' plain-CNN recipe trains without)
    baseline: {}                   the no-KD student: runs on the confirm seeds (paired), searched
                                   like the methods when they search the recipe (see study.graph)
    search: {budget: stratified | joint, scheduler: auto | asha | none, grace_period,
             max_concurrent, seed, sampler: auto | tpe | qmc | gp | random,
             replicates (independent searches per method x teacher size, default 1),
             seeds_per_trial (seeds each search trial trains; its value is their mean, default 1)}
    methods: {<name>: {trials (0: no search, the fixed configuration is confirmed), space: {<param>: value | {low, high, log} | {choices: [..]}},
                       assistant_sizes: [..], teacher_sizes: [..], confirm_seeds}}
             confirm_seeds: the first n of the shared confirm seeds (an expensive method can
             take fewer; still paired with the baseline on those seeds)
             `methods: {}` (the field is required, it may be empty) is a scratch-only
             study: the teacher ladder (if `teachers` is given) and the baseline
    confirm: {seeds, top_k}        seeds shared by the baseline and every confirm run; the top_k
                                   configurations of each search (on validation) are confirmed
    verdict: {delta, level}        smallest effect of interest (accuracy points), confidence level
    resources: {cpu, gpu, max_experiments}
    runtime: {device, precision, compile, channels_last, checkpoint_every_s}
    failure: {max_failures}
    report: {png}
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from trainables.data import available_datasets
from trainables.loop import OPTIMIZERS, SCHEDULES
from trainables.methods import HParam, available_methods
from trainables.models import available_families, build_model, family_options, family_sizes_hint

from .ranges import Range  # noqa: F401  (part of the spec's vocabulary)

#: hyperparameters every method can search besides its own
COMMON_HPARAMS = {
    "lr": HParam(3e-3, "float", 1e-7, 10.0, log=True, help="learning rate (same bounds as train.lr)"),
    "weight_decay": HParam(5e-4, "float", 0.0, 0.1, help="weight decay"),
}
#: a model larger than this is surely a typo in its size (and would not fit a GPU anyway)
MAX_PARAMS = 10**10
BUDGETS = ("stratified", "joint")
SCHEDULERS = ("auto", "asha", "none")
SAMPLERS = ("auto", "tpe", "qmc", "gp", "random")
#: search seeds stay below this; confirm (and baseline) seeds start there (disjoint, see study.graph)
MAX_SEARCH_SEED = 9_999
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
#: keys of the `teachers` section that describe the ladder, not the model
TEACHER_LADDER_KEYS = ("sizes", "seeds", "epochs", "export_epochs")


def teacher_model(teachers: dict, size) -> dict:
    """The model config of the teacher of `size` (the section's model options plus the size)."""
    return {**{k: v for k, v in teachers.items() if k not in TEACHER_LADDER_KEYS}, "size": size}


def dataset_shape(dataset: dict) -> tuple[tuple[int, ...], int]:
    """(input shape, number of classes) of a spec's dataset, known without loading it."""
    name = dataset.get("name")
    if name in ("cifar10", "cifar100"):
        return (3, 32, 32), 10 if name == "cifar10" else 100
    if name == "synthetic_image":
        return (3, 32, 32), 10
    return (1, 40), 10


class SpecError(ValueError):
    """The spec has problems; `problems` lists one message per problem."""

    def __init__(self, problems: list[str], source: str = "spec"):
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class MethodSpec:
    name: str
    trials: int
    search: dict[str, Range]      # parameters Optuna samples
    fixed: dict[str, Any]         # parameters held constant
    assistant_sizes: list = field(default_factory=list)
    teacher_sizes: list | None = None  # a subset of the ladder (frozen teachers) or own sizes (online)
    cls: type | None = field(default=None, repr=False)  # the registered Method class
    confirm_seeds: int | None = None  # the first n of the shared confirm seeds (default: all)


@dataclass
class Spec:
    name: str
    storage: str
    dataset: dict
    student: dict
    teachers: dict | None
    train: dict
    budget: str
    scheduler: str
    grace_period: int
    max_concurrent: int
    search_seed: int
    methods: dict[str, MethodSpec]
    confirm_seeds: int
    resources: dict
    runtime: dict
    max_failures: int
    report_png: bool
    top_k: int = 2
    sampler: str = "auto"        # auto | tpe | qmc | gp | random (study.samplers)
    replicates: int = 1          # independent searches per method x teacher size (study.graph)
    seeds_per_trial: int = 1     # seeds each search trial trains; its value is their mean
    delta: float = 0.5
    level: float = 0.95
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def teacher_sizes(self) -> list:
        return list(self.teachers["sizes"]) if self.teachers else []

    @property
    def trains_teachers(self) -> bool:
        """Whether the teacher ladder is trained: a method distils from frozen teachers, or the
        study is scratch-only (`methods: {}`) and lists `teachers` (their accuracies are its result)."""
        if not self.teachers:
            return False
        return not self.methods or any(m.cls.needs_teacher for m in self.methods.values())

    @property
    def shape(self) -> tuple[tuple[int, ...], int]:
        """(input shape, number of classes) of the dataset."""
        return dataset_shape(self.dataset)

    def teacher_model(self, size) -> dict:
        return teacher_model(self.teachers or {}, size)

    @property
    def study_uri(self) -> str:
        return self.storage.rstrip("/") + "/" + self.name


# --------------------------------------------------------------------------- loading


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 does.

    PyYAML implements YAML 1.1, where a float needs a dot: ``1e-3`` and
    ``5e-3`` load as strings, so ``lr: {low: 1e-3}`` would fail validation.
    This loader reads every YAML 1.2 float (``1e-3``, ``1E5``, ``.5``,
    ``+2.0e+1``, ``.inf``, ``.nan``) as a float; integers, booleans and
    strings are unchanged.
    """


_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)
SpecLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+.0123456789":
    # YAML 1.2 float after the 1.1 int resolver: `10` stays an int, `1e-3` becomes a float
    SpecLoader.yaml_implicit_resolvers.setdefault(_first, []).append(("tag:yaml.org,2002:float", _FLOAT_12))


def load_yaml(text: str) -> Any:
    """Parse spec YAML with `SpecLoader` (scientific notation such as ``1e-3`` is a number)."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader


def load_spec(path: str | Path, overrides: dict | None = None) -> Spec:
    """Read and validate a YAML spec (overrides replace top-level fields)."""
    path = Path(path)
    if not path.exists():
        raise SpecError([f"spec file {path} does not exist"], str(path))
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError([f"not valid YAML: {exc}"], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, unreadable, or not text
        raise SpecError([f"cannot read the spec file: {exc}"], str(path)) from None
    if overrides and (raw is None or isinstance(raw, dict)):  # other documents: parse_spec names the problem
        raw = {**(raw or {}), **{k: v for k, v in overrides.items() if v is not None}}
    return parse_spec(raw, source=str(path))


def parse_spec(raw: Any, source: str = "spec") -> Spec:
    v = _Validator(source)
    spec = v.spec(raw)
    if v.problems:
        raise SpecError(v.problems, source)
    return spec


class _Validator:
    """Collects one message per problem instead of stopping at the first."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def err(self, where: str, msg: str) -> None:
        self.problems.append(f"{where}: {msg}")

    # -- small typed getters ------------------------------------------------------
    def section(self, raw: dict, key: str, required=False) -> dict:
        val = raw.get(key)
        if val is None:
            if required:
                self.err(key, "is required")
            return {}
        if not isinstance(val, dict):
            self.err(key, f"must be a mapping, got {type(val).__name__}")
            return {}
        return val

    def unknown(self, where: str, given: dict, allowed) -> None:
        for k in given:
            if k not in allowed:
                self.err(f"{where}.{k}" if where else str(k), f"unknown field; allowed: {', '.join(sorted(allowed))}")

    def num(self, where, val, default, *, kind=float, low=None, high=None):
        if val is None:
            return default
        if isinstance(val, bool) or not isinstance(val, (int, float)) or (kind is int and int(val) != val):
            self.err(where, f"must be {'an integer' if kind is int else 'a number'}, got {val!r}")
            return default
        if low is not None and val < low:
            self.err(where, f"must be at least {low}, got {val!r}")
            return default
        if high is not None and val > high:
            self.err(where, f"must be at most {high}, got {val!r}")
            return default
        return kind(val)

    def choice(self, where, val, default, allowed):
        if val is None:
            return default
        if val not in allowed:
            self.err(where, f"must be one of {', '.join(map(str, allowed))}; got {val!r}")
            return default
        return val

    def boolean(self, where, val, default):
        if val is None:
            return default
        if not isinstance(val, bool):
            self.err(where, f"must be true or false, got {val!r}")
            return default
        return val

    def text(self, where, val, default=None, required=False):
        if val is None:
            if required:
                self.err(where, "is required")
            return default
        if not isinstance(val, str) or not val:
            self.err(where, f"must be a non-empty string, got {val!r}")
            return default
        return val

    # -- sections -------------------------------------------------------------------
    def spec(self, raw) -> Spec | None:
        if not isinstance(raw, dict):
            self.err("spec", f"must be a YAML mapping of fields, got {type(raw).__name__}")
            return None
        self.unknown("", raw, {"name", "storage", "dataset", "student", "teachers", "train", "baseline",
                               "search", "methods", "confirm", "resources", "runtime", "failure", "report",
                               "description", "verdict"})
        name = self.text("name", raw.get("name"), required=True)
        if name and not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            self.err("name", f"may contain only letters, digits, '-' and '_'; got {name!r}")
        storage = self.text("storage", raw.get("storage"), "./kdstudy_results")
        if storage and "://" not in storage:
            # trials run in their own working directories: a relative path must be fixed here
            storage = os.path.abspath(os.path.expanduser(storage))
        dataset = self.dataset(self.section(raw, "dataset", required=True))
        student = self.model("student", self.section(raw, "student", required=True), dataset)
        train = self.train(self.section(raw, "train"))
        methods = self.methods(self.section(raw, "methods", required=True))  # may be {}: scratch only
        teachers = self.teachers(raw.get("teachers"), dataset, train, methods)
        baseline = self.section(raw, "baseline")
        if "seeds" in baseline:
            self.err("baseline.seeds", "the baseline runs on the confirm seeds (confirm.seeds), paired with every "
                     "method; remove this field")
        self.unknown("baseline", {k: v for k, v in baseline.items() if k != "seeds"}, set())
        search = self.section(raw, "search")
        self.unknown("search", search, {"budget", "scheduler", "grace_period", "max_concurrent", "seed", "sampler",
                                        "replicates", "seeds_per_trial"})
        confirm = self.section(raw, "confirm")
        self.unknown("confirm", confirm, {"seeds", "top_k"})
        verdict = self.section(raw, "verdict")
        self.unknown("verdict", verdict, {"delta", "level"})
        resources = self.section(raw, "resources")
        self.unknown("resources", resources, {"cpu", "gpu", "max_experiments"})
        runtime = self.section(raw, "runtime")
        self.unknown("runtime", runtime, {"device", "precision", "compile", "channels_last", "checkpoint_every_s"})
        gpu = self.num("resources.gpu", resources.get("gpu"), 0.0, low=0.0, high=8)
        if gpu > 1 and gpu != int(gpu):
            self.err("resources.gpu", f"a fraction of one GPU (at most 1) or a whole number of GPUs; got {gpu}")
        failure = self.section(raw, "failure")
        self.unknown("failure", failure, {"max_failures"})
        report = self.section(raw, "report")
        self.unknown("report", report, {"png"})
        budget = self.choice("search.budget", search.get("budget"), "stratified", BUDGETS)
        n_confirm = confirm.get("seeds", 5) if isinstance(confirm.get("seeds", 5), int) else 5
        for m in methods.values():
            if m.confirm_seeds is not None and m.confirm_seeds > n_confirm:
                self.err(f"methods.{m.name}.confirm_seeds", f"at most confirm.seeds ({n_confirm}); got {m.confirm_seeds}")
        for m in methods.values():
            if not teachers or not (m.cls.needs_teacher or m.cls.online_teacher):
                continue
            if m.teacher_sizes is None:
                m.teacher_sizes = list(teachers["sizes"])
            elif m.cls.needs_teacher:
                extra = [z for z in m.teacher_sizes if z not in teachers["sizes"]]
                if extra:
                    self.err(f"methods.{m.name}.teacher_sizes", f"{extra} not in teachers.sizes {teachers['sizes']}")
            else:
                for z in m.teacher_sizes:
                    self.check_model(f"methods.{m.name}.teacher_sizes", teacher_model(teachers, z), dataset)
            if budget == "joint" and len(m.teacher_sizes) > 1 and m.trials < len(m.teacher_sizes):
                self.err(f"methods.{m.name}.trials", f"with budget 'joint' needs at least one trial per "
                         f"teacher size ({len(m.teacher_sizes)}); got {m.trials}")
        search_seed = self.num("search.seed", search.get("seed"), 0, kind=int, low=0, high=MAX_SEARCH_SEED)
        replicates = self.num("search.replicates", search.get("replicates"), 1, kind=int, low=1, high=100)
        seeds_per_trial = self.num("search.seeds_per_trial", search.get("seeds_per_trial"), 1, kind=int, low=1,
                                   high=100)
        if search_seed + replicates * seeds_per_trial - 1 > MAX_SEARCH_SEED:
            self.err("search", f"seed + replicates x seeds_per_trial must stay below {MAX_SEARCH_SEED + 1} (search "
                     f"seeds are disjoint from the confirm seeds); got {search_seed} + {replicates} x {seeds_per_trial}")
        return Spec(
            name=name or "", storage=storage, dataset=dataset, student=student, teachers=teachers, train=train,
            budget=budget,
            sampler=self.choice("search.sampler", search.get("sampler"), "auto", SAMPLERS),
            replicates=replicates, seeds_per_trial=seeds_per_trial,
            scheduler=self.choice("search.scheduler", search.get("scheduler"), "auto", SCHEDULERS),
            grace_period=self.num("search.grace_period", search.get("grace_period"), 2, kind=int, low=1),
            max_concurrent=self.num("search.max_concurrent", search.get("max_concurrent"), 2, kind=int, low=1),
            search_seed=search_seed,
            methods=methods,
            confirm_seeds=self.num("confirm.seeds", confirm.get("seeds"), 5, kind=int, low=0, high=1000),
            top_k=self.num("confirm.top_k", confirm.get("top_k"), 2, kind=int, low=1, high=100),
            delta=self.num("verdict.delta", verdict.get("delta"), 0.5, low=0.0, high=100.0),
            level=self.num("verdict.level", verdict.get("level"), 0.95, low=0.5, high=0.999),
            resources={"cpu": self.num("resources.cpu", resources.get("cpu"), 1.0, low=0.01, high=512),
                       "gpu": gpu,
                       "max_experiments": self.num("resources.max_experiments", resources.get("max_experiments"),
                                                   None, kind=int, low=1)},
            runtime={"device": self.choice("runtime.device", runtime.get("device"), "auto", DEVICES),
                     "precision": self.choice("runtime.precision", runtime.get("precision"), "auto", PRECISIONS),
                     "compile": self.boolean("runtime.compile", runtime.get("compile"), False),
                     "channels_last": self.choice("runtime.channels_last", runtime.get("channels_last"), "auto",
                                                  ("auto", True, False)),
                     "checkpoint_every_s": self.num("runtime.checkpoint_every_s", runtime.get("checkpoint_every_s"),
                                                    30.0, low=0.0, high=86400)},
            max_failures=self.num("failure.max_failures", failure.get("max_failures"), 2, kind=int, low=0, high=100),
            report_png=self.boolean("report.png", report.get("png"), True),
            raw=raw,
        )

    def dataset(self, d: dict) -> dict:
        self.unknown("dataset", d, {"name", "root", "download", "num_samples", "val_fraction", "split_seed",
                                    "train_subset", "synthetic_size", "data_seed"})
        name = self.choice("dataset.name", d.get("name"), None, available_datasets())
        if d.get("name") is None:
            self.err("dataset.name", f"is required; one of {', '.join(available_datasets())}")
        out = {"name": name}
        if d.get("root") is not None:
            out["root"] = self.text("dataset.root", d.get("root"))
        out["download"] = self.boolean("dataset.download", d.get("download"), False)
        vf = d.get("val_fraction")
        if vf == 0 and not isinstance(vf, bool):  # no validation split: selection by the last epoch (see above)
            out["val_fraction"] = 0.0
        else:
            out["val_fraction"] = self.num("dataset.val_fraction", vf, 0.1, low=0.01, high=0.5)
        out["split_seed"] = self.num("dataset.split_seed", d.get("split_seed"), 0, kind=int, low=0)
        for key, low in (("num_samples", 200), ("train_subset", 10), ("synthetic_size", 64), ("data_seed", 0)):
            if d.get(key) is not None:
                out[key] = self.num(f"dataset.{key}", d.get(key), None, kind=int, low=low)
        return out

    def model(self, where: str, d: dict, dataset: dict, sizes_key="size") -> dict:
        fams = available_families()
        family = d.get("family")
        if family is None:
            self.err(f"{where}.family", f"is required; one of {', '.join(fams)}")
            return {}
        if family not in fams:
            self.err(f"{where}.family", f"must be one of {', '.join(fams)}; got {family!r}")
            return {}
        cfg = {k: v for k, v in d.items() if k not in TEACHER_LADDER_KEYS}
        sizes = d.get(sizes_key)
        if sizes_key == "sizes":
            if not isinstance(sizes, list) or not sizes:
                self.err(f"{where}.sizes", "must be a non-empty list of sizes")
                return cfg
            if len(set(map(str, sizes))) != len(sizes):
                self.err(f"{where}.sizes", f"has repeated sizes: {sizes}")
        else:
            sizes = [sizes]
        for s in sizes:
            self.check_model(f"{where}.{sizes_key}", {**cfg, "size": s}, dataset)
        return cfg if sizes_key == "sizes" else {**cfg, "size": sizes[0]}

    def check_model(self, where: str, cfg: dict, dataset: dict) -> None:
        if cfg.get("size") is None:
            self.err(where, f"is required ({family_sizes_hint(cfg['family'])})")
            return
        allowed = {"family", "size", *family_options(cfg["family"])}
        for key in cfg:
            if key not in allowed:
                self.err(f"{where.rsplit('.', 1)[0]}.{key}", f"is not an option of {cfg['family']}; "
                         f"options: {', '.join(sorted(allowed - {'family'}))}")
        in_shape = dataset_shape(dataset)[0]
        try:
            with torch.device("meta"):  # shapes only: no memory is allocated, whatever the size
                model = build_model(cfg, in_shape, 10)
            params = sum(p.numel() for p in model.parameters())
        except Exception as exc:  # any failure to build is a problem of this field, never a crash
            self.err(where, f"{cfg['family']} of size {cfg.get('size')!r} cannot be built: {exc}")
            return
        if params > MAX_PARAMS:
            self.err(where, f"{cfg['family']} of size {cfg.get('size')!r} has {params:.3g} parameters; "
                     f"at most {MAX_PARAMS:.0e} are allowed")

    def train(self, d: dict) -> dict:
        self.unknown("train", d, {"epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "nesterov",
                                  "schedule", "milestones", "gamma", "grad_clip", "augment"})
        out = {
            "epochs": self.num("train.epochs", d.get("epochs"), 10, kind=int, low=1, high=10000),
            "batch_size": self.num("train.batch_size", d.get("batch_size"), 128, kind=int, low=1, high=65536),
            "optimizer": self.choice("train.optimizer", d.get("optimizer"), "adamw", OPTIMIZERS),
            "lr": self.num("train.lr", d.get("lr"), 3e-3, low=1e-7, high=10),
            "weight_decay": self.num("train.weight_decay", d.get("weight_decay"), 5e-4, low=0, high=1),
            "momentum": self.num("train.momentum", d.get("momentum"), 0.9, low=0, high=1),
            "nesterov": self.boolean("train.nesterov", d.get("nesterov"), True),
            "schedule": self.choice("train.schedule", d.get("schedule"), "onecycle", SCHEDULES),
            "gamma": self.num("train.gamma", d.get("gamma"), 0.1, low=0, high=1),
        }
        # recorded only when off, so the teacher-zoo keys (a hash of the recipe) of existing studies stay valid
        if not self.boolean("train.augment", d.get("augment"), True):
            out["augment"] = False
        if d.get("milestones") is not None:
            ms = d["milestones"]
            if not isinstance(ms, list) or not all(isinstance(m, (int, float)) and 0 < m < 1 for m in ms):
                self.err("train.milestones", f"must be a list of fractions of training in (0, 1); got {ms!r}")
            else:
                out["milestones"] = list(ms)
        if d.get("grad_clip") is not None:
            out["grad_clip"] = self.num("train.grad_clip", d["grad_clip"], None, low=0)
        return out

    def teachers(self, raw, dataset, train, methods) -> dict | None:
        needed = any(m.cls.needs_teacher or m.cls.online_teacher for m in methods.values())
        if raw is None:
            if needed:
                self.err("teachers", "is required by the methods "
                         + ", ".join(n for n, m in methods.items()
                                     if m.cls.needs_teacher or m.cls.online_teacher))
            return None
        if not isinstance(raw, dict):
            self.err("teachers", f"must be a mapping, got {type(raw).__name__}")
            return None
        allowed = {"family", "sizes", "seeds", "epochs", "export_epochs"}
        if raw.get("family") in available_families():  # the family's own options (width, depth, kernel, ...)
            allowed |= set(family_options(raw["family"]))
        self.unknown("teachers", {k: v for k, v in raw.items()}, allowed)
        cfg = self.model("teachers", {k: v for k, v in raw.items() if k in allowed}, dataset, sizes_key="sizes")
        out = {k: v for k, v in cfg.items() if k != "sizes"}
        sizes = raw.get("sizes")
        out["sizes"] = list(sizes) if isinstance(sizes, list) else []  # a non-list was reported above
        out["seeds"] = self.num("teachers.seeds", raw.get("seeds"), 1, kind=int, low=1, high=100)
        out["epochs"] = self.num("teachers.epochs", raw.get("epochs"), train["epochs"], kind=int, low=1)
        ee = raw.get("export_epochs") or []
        if not isinstance(ee, list) or not all(isinstance(e, int) and 1 <= e <= out["epochs"] for e in ee):
            self.err("teachers.export_epochs", f"must be a list of epochs between 1 and {out['epochs']}; got {ee!r}")
            ee = []
        out["export_epochs"] = sorted(set(ee))
        if "eskd" in methods and not out["export_epochs"]:
            self.err("teachers.export_epochs", "method eskd needs the teacher epochs to keep (e.g. [5, 10])")
        return out

    def methods(self, d: dict) -> dict[str, MethodSpec]:
        known = available_methods()
        out = {}
        for name, m in d.items():  # none: a scratch-only study (teachers and baseline)
            where = f"methods.{name}"
            if name not in known:
                self.err(where, f"unknown method; known: {', '.join(known)}")
                continue
            if m is None:
                m = {}
            if not isinstance(m, dict):
                self.err(where, f"must be a mapping, got {type(m).__name__}")
                continue
            self.unknown(where, m, {"trials", "space", "assistant_sizes", "teacher_sizes", "confirm_seeds"})
            cls = known[name]
            # trials: 0 runs no search: the fixed (or declared default) configuration goes straight to confirm
            trials = self.num(f"{where}.trials", m.get("trials"), 8, kind=int, low=0, high=100000)
            params = {**COMMON_HPARAMS, **cls.hparams}
            search, fixed = {}, {}
            space = m.get("space") or {}
            if not isinstance(space, dict):
                self.err(f"{where}.space", "must be a mapping of parameter -> value or range")
                space = {}
            for p, val in space.items():
                pw = f"{where}.space.{p}"
                if p not in params:
                    self.err(pw, f"is not a parameter of {name}; its parameters: {', '.join(sorted(params))}")
                    continue
                r = self.range(pw, val, params[p])
                if isinstance(r, Range):
                    search[p] = r
                elif r is not None:
                    fixed[p] = r
            for p, hp in cls.hparams.items():  # unmentioned parameters: searched over their declared range
                if p in search or p in fixed or not hp.searched or trials == 0:
                    continue
                if hp.kind == "categorical" and hp.choices:
                    search[p] = Range("categorical", choices=tuple(hp.choices))
                elif hp.low is not None and hp.high is not None:
                    search[p] = Range(hp.kind, hp.low, hp.high, hp.log)
            if trials == 0 and search:
                self.err(f"{where}.trials", f"0 runs no search, but {', '.join(sorted(search))} "
                         "would be searched; fix them or give trials")
            ms = MethodSpec(name=name, trials=trials, search=search, fixed=fixed, cls=cls,
                            confirm_seeds=self.num(f"{where}.confirm_seeds", m.get("confirm_seeds"), None,
                                                   kind=int, low=1, high=1000))
            ts = m.get("teacher_sizes")
            if ts is not None:
                if not isinstance(ts, list) or not ts:
                    self.err(f"{where}.teacher_sizes", "must be a non-empty list of teacher sizes")
                elif not (cls.needs_teacher or cls.online_teacher):
                    self.err(f"{where}.teacher_sizes", f"method {name} uses no teacher")
                else:
                    ms.teacher_sizes = ts
            if name == "takd":
                sizes = m.get("assistant_sizes")
                if not isinstance(sizes, list) or not sizes:
                    self.err(f"{where}.assistant_sizes", "must list the teacher-assistant sizes to try")
                else:
                    ms.assistant_sizes = sizes
            elif m.get("assistant_sizes") is not None:
                self.err(f"{where}.assistant_sizes", "applies only to method takd")
            out[name] = ms
        return out

    def range(self, where: str, val, hp: HParam):
        """A fixed value (returned as is), a Range, or None after an error."""
        if isinstance(val, dict):
            self.unknown(where, val, {"low", "high", "log", "choices"})
            if "choices" in val:
                ch = val["choices"]
                if not isinstance(ch, list) or not ch:
                    self.err(f"{where}.choices", "must be a non-empty list")
                    return None
                for c in ch:
                    msg = hp.check(where.rsplit(".", 1)[-1], c)
                    if msg:
                        self.err(where, msg)
                        return None
                return Range("categorical", choices=tuple(ch))
            if hp.kind == "categorical":
                self.err(where, f"takes choices from {list(hp.choices or ())}, not a range")
                return None
            low, high = val.get("low"), val.get("high")
            if low is None or high is None:
                self.err(where, "a range needs both low and high (or give choices: [...])")
                return None
            pname = where.rsplit(".", 1)[-1]
            for bound in (low, high):
                msg = hp.check(pname, bound)
                if msg:
                    self.err(where, msg)
                    return None
            if not low < high:
                self.err(where, f"low ({low}) must be below high ({high})")
                return None
            log = self.boolean(f"{where}.log", val.get("log"), False)
            if log and low <= 0:
                self.err(where, f"a log range needs low > 0, got {low}")
                return None
            return Range(hp.kind, float(low) if hp.kind == "float" else int(low),
                         float(high) if hp.kind == "float" else int(high), log)
        msg = hp.check(where.rsplit(".", 1)[-1], val)
        if msg:
            self.err(where, msg)
            return None
        return val
