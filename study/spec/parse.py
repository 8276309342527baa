"""Validating a spec: every problem at once, then the typed `Spec` the inner code trusts.

Each section is validated on its own with its model from `study.spec.model` (so a
wrong `train` does not hide a wrong `methods`), then the checks that need several
sections run on whatever validated: the models build at the dataset's input shape,
methods find the teachers they need, a method's teacher sizes are on the ladder, and
so on. Only when nothing is wrong is the `Spec` view built; its dicts hold exactly
what names experiments and zoo entries (see `study.spec.view`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from trainables import models as _models
from trainables import plugins as _plugins
from trainables.models import arch_name, build_model

from ..ranges import Range
from .errors import SpecError, join, key_text, problems_of
from .loading import SpecYAMLError, load_yaml, read_spec_text
from .model import COMMON_HPARAMS, MAX_SEARCH_SEED, DatasetBase, SpecModels, short, spec_models, uses_teacher
from .view import TEACHER_LADDER_KEYS, MethodSpec, Spec, dataset_shape, teacher_model

#: a model larger than this is surely a typo in its size (and would not fit a GPU anyway)
MAX_PARAMS = 10**10


def load_spec(path: str | Path, overrides: dict | None = None, import_plugins: bool = True) -> Spec:
    """Read and validate a YAML spec (overrides replace top-level fields).

    The spec's `plugins` (relative to the spec's folder) and the installed
    ``kdstudy.plugins`` entry points are imported first (`import_plugins=False`:
    not), so their methods, families and datasets validate. Raises SpecError."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise SpecError([f"spec file {path} does not exist"], source)
    try:
        text = read_spec_text(path)
        raw = load_yaml(text)
    except SpecYAMLError as exc:
        raise SpecError([str(exc)], source) from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, unreadable, or not text
        raise SpecError([f"cannot read the spec file: {short(str(exc), 200)}"], source) from None
    if overrides and (raw is None or isinstance(raw, dict)):  # other documents: parse_spec names the problem
        raw = {**(raw or {}), **{k: v for k, v in overrides.items() if v is not None}}
    spec_dir = str(path.resolve().parent)
    if import_plugins:
        load_spec_plugins(raw, spec_dir, source)
    return parse_spec(raw, source=source, spec_dir=spec_dir)


def spec_plugins(raw: Any) -> list[str]:
    """The `plugins` a spec document names (empty when there are none or they are malformed)."""
    refs = raw.get("plugins") if isinstance(raw, dict) else None
    if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
        return []  # malformed: validation names the problem
    return list(refs)


def load_spec_plugins(raw: Any, spec_dir: str | None, source: str = "spec") -> list[dict]:
    """Import the plug-ins a spec document names (and the installed entry points); their records.
    A plug-in that cannot be imported raises SpecError with one line naming it."""
    try:
        return _plugins.load_plugins(spec_plugins(raw), spec_dir, entry_points=True)
    except _plugins.PluginError as exc:
        raise SpecError([str(exc)], source) from None


def parse_spec(raw: Any, source: str = "spec", spec_dir: str | None = None) -> Spec:
    """Validate a spec document (a dict, as YAML gives it) into a `Spec`; raises SpecError listing
    every problem. Plug-ins are not imported here (`load_spec` does that); their sources are
    found and hashed relative to `spec_dir` (default: the working directory)."""
    v = _Validator(spec_models(), spec_dir)
    spec = v.spec(raw)
    if v.problems:
        raise SpecError(v.problems, source)
    return spec


def _given(obj: BaseModel) -> dict:
    """The fields the spec wrote, by their spec names, in the model's order."""
    fields = type(obj).model_fields
    return {(fields[n].alias or n): getattr(obj, n) for n in fields if n in obj.model_fields_set}


class _Validator:
    """Validates section by section, collecting one message per problem."""

    def __init__(self, models: SpecModels, spec_dir: str | None):
        self.m = models
        self.spec_dir = os.path.abspath(spec_dir) if spec_dir else os.getcwd()
        self.problems: list[str] = []

    def err(self, where: str, msg: str) -> None:
        text = f"{where}: {msg}"
        if text not in self.problems:
            self.problems.append(text)

    def validate(self, model: type[BaseModel], value: dict, where: str):
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            for p in problems_of(exc, model, where):
                if p not in self.problems:
                    self.problems.append(p)
            return None

    def section(self, raw: dict, key: str, model: type[BaseModel], required: bool = False):
        value = raw.get(key)
        if value is None:
            if required:
                self.err(key, "is required")
                return None
            value = {}
        if not isinstance(value, dict):
            self.err(key, f"must be a mapping, got {type(value).__name__}")
            return None
        return self.validate(model, value, key)

    # ------------------------------------------------------------------ the whole spec
    def spec(self, raw) -> Spec | None:
        if not isinstance(raw, dict):
            self.err("spec", f"must be a YAML mapping of fields, got {type(raw).__name__}")
            return None
        allowed = sorted(f.alias or n for n, f in self.m.root.model_fields.items())
        for key in raw:
            if key not in allowed:
                self.err(key_text(key), f"unknown field; allowed: {', '.join(allowed)}")
        head = self.validate(self.m.head, raw, "")
        sources = self.plugin_sources(raw.get("plugins") if head is not None else None)
        dataset = self.dataset(raw.get("dataset"))
        shape_of = self.dataset_shape(dataset)  # None: the models cannot be checked against it
        student = self.model("student", raw.get("student"), self.m.students, required=True)
        if student is not None:
            self.check_model("student.size", student, shape_of)
        train = self.section(raw, "train", self.m.sections["train"])
        methods = self.methods(raw.get("methods"))
        # the methods named, valid or not: a method with a wrong space still needs its teachers
        named = [n for n in (raw.get("methods") or {}) if isinstance(n, str) and n in self.m.methods] \
            if isinstance(raw.get("methods"), dict) else []
        teachers = self.teachers(raw.get("teachers"), shape_of, train, named)
        self.section(raw, "baseline", self.m.sections["baseline"])
        search = self.section(raw, "search", self.m.sections["search"])
        confirm = self.section(raw, "confirm", self.m.sections["confirm"])
        verdict = self.section(raw, "verdict", self.m.sections["verdict"])
        resources = self.section(raw, "resources", self.m.sections["resources"])
        runtime = self.section(raw, "runtime", self.m.sections["runtime"])
        failure = self.section(raw, "failure", self.m.sections["failure"])
        report = self.section(raw, "report", self.m.sections["report"])
        tracking = self.section(raw, "tracking", self.m.sections["tracking"])
        budget = search.budget if search is not None else "stratified"
        if search is not None and search.seed + search.replicates * search.seeds_per_trial - 1 > MAX_SEARCH_SEED:
            self.err("search", f"seed + replicates x seeds_per_trial must stay below {MAX_SEARCH_SEED + 1} (search "
                     f"seeds are disjoint from the confirm seeds); got {search.seed} + {search.replicates} x "
                     f"{search.seeds_per_trial}")
        self.cross_method(methods or {}, teachers, shape_of, confirm, budget)
        self.imported_uses(methods or {}, teachers)
        if self.problems:
            return None
        storage = head.storage
        if "://" not in storage:
            # trials run in their own working directories: a relative path must be fixed here
            storage = os.path.abspath(os.path.expanduser(storage))
        return Spec(
            name=head.name, storage=storage, dataset=dataset, student=student, teachers=teachers,
            train=self.train_view(train), budget=budget, scheduler=search.scheduler,
            grace_period=search.grace_period, max_concurrent=search.max_concurrent, search_seed=search.seed,
            methods=methods, confirm_seeds=confirm.seeds, top_k=confirm.top_k,
            delta=verdict.delta, level=verdict.level,
            resources={"cpu": resources.cpu, "gpu": resources.gpu, "max_experiments": resources.max_experiments},
            runtime={"device": runtime.device, "precision": runtime.precision, "compile": runtime.compile,
                     "channels_last": runtime.channels_last, "checkpoint_every_s": runtime.checkpoint_every_s},
            max_failures=failure.max_failures, report_png=report.png, raw=self.recorded_raw(raw, teachers),
            sampler=search.sampler, replicates=search.replicates, seeds_per_trial=search.seeds_per_trial,
            tracking=self.tracking_view(tracking), plugins=list(head.plugins), plugin_sources=sources,
            spec_dir=self.spec_dir,
        )

    def plugin_sources(self, refs) -> list[dict]:
        """Each plug-in found and hashed (nothing executed); a missing one is a problem."""
        records, seen = [], set()
        for i, ref in enumerate(refs or []):
            try:
                rec = _plugins.describe([ref], self.spec_dir, entry_points=False)[0]
            except _plugins.PluginError as exc:
                self.err(f"plugins[{i}]", exc.message)
                continue
            if rec["module"] not in seen:
                seen.add(rec["module"])
                records.append(rec)
        try:
            records += _plugins.describe([], entry_points=True)
        except _plugins.PluginError as exc:
            self.err("plugins", f"installed entry point {exc}")
        return records

    # ------------------------------------------------------------------ dataset and models
    def dataset(self, d) -> dict | None:
        if d is None:
            self.err("dataset", "is required")
            return None
        if not isinstance(d, dict):
            self.err("dataset", f"must be a mapping, got {type(d).__name__}")
            return None
        names = list(self.m.datasets)
        name = d.get("name")
        if name is None or not isinstance(name, str) or name not in self.m.datasets:
            if name is None:
                self.err("dataset.name", f"is required; one of {', '.join(names)}")
            else:
                self.err("dataset.name", f"must be one of {', '.join(names)}; got {short(name)}")
            self.validate(_DatasetCommon, {k: v for k, v in d.items() if k != "name"}, "dataset")
            return None
        ds = self.validate(self.m.datasets[name], d, "dataset")
        if ds is None:
            return None
        given = _given(ds)
        out = {"name": name}
        if "root" in given:
            out["root"] = given["root"]
        out["download"] = ds.download
        out["val_fraction"] = 0.0 if ds.val_fraction == 0 else float(ds.val_fraction)
        out["split_seed"] = ds.split_seed
        for key, value in given.items():  # the entry's own options, and train_subset, only when written
            if key not in ("name", "root", "download", "val_fraction", "split_seed"):
                out[key] = value
        return out

    def family(self, where: str, d: dict, models: dict) -> type[BaseModel] | None:
        fams = list(models)
        family = d.get("family")
        if family is None:
            self.err(f"{where}.family", f"is required; one of {', '.join(fams)}")
            return None
        if not isinstance(family, str) or family not in models:
            self.err(f"{where}.family", f"must be one of {', '.join(fams)}; got {short(family)}")
            return None
        return models[family]

    def model(self, where: str, d, models: dict, required: bool) -> dict | None:
        if d is None:
            if required:
                self.err(where, "is required")
            return None
        if not isinstance(d, dict):
            self.err(where, f"must be a mapping, got {type(d).__name__}")
            return None
        model = self.family(where, d, models)
        if model is None:
            return None
        d, by_size = self.size_options(where, d, [d.get("size")])
        obj = self.validate(model, d, where)
        if obj is None:
            return None
        given = _given(obj)
        return {"family": given.pop("family"), **{k: v for k, v in given.items() if k != "size"}, **by_size,
                "size": given["size"]}

    def size_options(self, where: str, d: dict, sizes: list) -> tuple[dict, dict]:
        """Split off the options that exist only for some sizes of the family (a torchvision model's
        constructor options): allowed when some size of the section has them, checked here; the rest
        of `d` goes to the family's typed model."""
        family = d.get("family")
        static = set(_models.family_option_specs(family))
        extra: dict = {}
        for size in sizes if isinstance(sizes, list) else []:
            try:
                opts = _models.family_option_specs(family, size)
            except Exception:  # a bad size is reported where the sizes are checked
                continue
            for k, o in opts.items():
                if k not in static:
                    extra.setdefault(k, o)
        taken = {k: v for k, v in d.items() if k in extra}
        for k, v in taken.items():
            msg = extra[k].check(k, v)
            if msg:
                self.err(f"{where}.{k}", msg)
        return {k: v for k, v in d.items() if k not in taken}, taken

    def dataset_shape(self, dataset: dict | None) -> tuple[tuple[int, ...], int] | None:
        """(input shape, classes) from the dataset registry's facts, or None after a problem."""
        if dataset is None:
            return None
        try:
            return dataset_shape(dataset)
        except Exception as exc:  # DatasetError names the folder or file; anything else: still one line
            self.err("dataset", short(str(exc), 300))
            return None

    def check_model(self, where: str, cfg: dict, shape: tuple[tuple[int, ...], int] | None) -> None:
        """The model builds at the dataset's input shape (shapes only) and is not absurdly large."""
        if shape is None:  # the dataset is unknown: check the family's own rules (size, options) only
            try:
                arch_name(cfg)
            except Exception as exc:
                self.err(where, f"{cfg['family']} of size {short(cfg.get('size'))} cannot be built: "
                         f"{short(str(exc), 300)}")
            return
        in_shape, classes = shape
        try:
            with torch.device("meta"):  # shapes only: no memory is allocated, whatever the size
                model = build_model(cfg, in_shape, classes)
            params = sum(p.numel() for p in model.parameters())
        except Exception as exc:  # any failure to build is a problem of this field, never a crash
            self.err(where, f"{cfg['family']} of size {short(cfg.get('size'))} cannot be built: "
                     f"{short(str(exc), 300)}")
            return
        if params > MAX_PARAMS:
            self.err(where, f"{cfg['family']} of size {short(cfg.get('size'))} has {params:.3g} parameters; "
                     f"at most {MAX_PARAMS:.0e} are allowed")

    def teachers(self, raw, shape, train, methods: list[str]) -> dict | None:
        needing = [n for n in methods if uses_teacher(self.m.method_classes[n])]
        if raw is None:
            if needing:
                self.err("teachers", "is required by the methods " + ", ".join(needing))
            return None
        if not isinstance(raw, dict):
            self.err("teachers", f"must be a mapping, got {type(raw).__name__}")
            return None
        model = self.family("teachers", raw, self.m.teachers)
        if model is None:
            return None
        raw, by_size = self.size_options("teachers", raw, raw.get("sizes"))
        obj = self.validate(model, raw, "teachers")
        if obj is None:
            return None
        given = _given(obj)
        out = {**{k: v for k, v in given.items() if k not in TEACHER_LADDER_KEYS}, **by_size}
        sizes = list(obj.sizes)
        if not sizes:
            self.err("teachers.sizes", "must be a non-empty list of sizes")
        elif len(set(map(str, sizes))) != len(sizes):
            self.err("teachers.sizes", f"has repeated sizes: {short(sizes)}")
        for s in sizes:
            self.check_model("teachers.sizes", {**out, "size": s}, shape)
        out["sizes"] = sizes
        out["seeds"] = obj.seeds
        epochs = obj.epochs if obj.epochs is not None else (train.epochs if train is not None else 10)
        out["epochs"] = epochs
        ee = list(obj.export_epochs)
        if not all(1 <= e <= epochs for e in ee):
            self.err("teachers.export_epochs", f"must be a list of epochs between 1 and {epochs}; got {short(ee)}")
            ee = []
        out["export_epochs"] = sorted(set(ee))
        early = [n for n in methods if self.m.method_classes[n].early_teacher]
        if early and not out["export_epochs"]:
            self.err("teachers.export_epochs", f"method {early[0]} needs the teacher epochs to keep (e.g. [5, 10])")
        weights = self.weights(obj.weights or {}, sizes)
        if weights:  # only when given: a ladder without imported teachers keeps its dict (and hashes)
            out["weights"] = weights
        return out

    def weights(self, weights: dict, sizes: list) -> dict:
        """The imported teachers: each path resolved against the spec's folder, and the file's sha256
        where the spec does not give it and the file can be read now (what the study records of it,
        see `recorded_raw`; a file that cannot be read is named by the preflight, before Ray starts)."""
        from trainables.imported import WeightsError, file_sha256

        by_text = {str(s): s for s in sizes}
        out = {}
        for size, entry in weights.items():
            if str(size) not in by_text:
                self.err(join("teachers.weights", size), f"is not a size of the ladder ({short(sizes)})")
                continue
            path = entry["path"]
            if "://" not in path and not os.path.isabs(os.path.expanduser(path)):
                path = os.path.join(self.spec_dir, path)
            entry = {**entry, "path": os.path.expanduser(path) if "://" not in path else path}
            if "sha256" not in entry:
                try:
                    entry["sha256"] = file_sha256(entry["path"])
                except WeightsError:
                    pass
            out[by_text[str(size)]] = entry
        return out

    @staticmethod
    def recorded_raw(raw: dict, teachers: dict | None) -> dict:
        """The spec as the study records it: as written, with each imported teacher's sha256 added
        (a study names its imported teachers by their files' content, so an edited file is another
        study's teacher; a spec without `teachers.weights` is returned as it is)."""
        weights = (teachers or {}).get("weights") or {}
        given = (raw.get("teachers") or {}).get("weights") if isinstance(raw.get("teachers"), dict) else None
        if not weights or not isinstance(given, dict):
            return raw
        by_text = {str(z): w for z, w in weights.items()}
        out = {}
        for size, value in given.items():
            entry = value if isinstance(value, dict) else {"path": value}
            sha = (by_text.get(str(size)) or {}).get("sha256")
            out[size] = {**entry, "sha256": sha} if sha and "sha256" not in entry else value
        return {**raw, "teachers": {**raw["teachers"], "weights": out}}

    def imported_uses(self, methods: dict, teachers: dict | None) -> None:
        """A method that reads the teacher's early epochs (ESKD's `teacher_epoch`) cannot use an
        imported teacher: it has no such checkpoints."""
        imported = {str(z) for z in ((teachers or {}).get("weights") or {})}
        if not imported:
            return
        for name, m in methods.items():
            early = ("teacher_epoch" in m.search or "teacher_epoch" in m.fixed
                     or (m.cls is not None and m.cls.early_teacher))
            if early and m.cls is not None and m.cls.needs_teacher:
                hit = [z for z in (m.teacher_sizes or teachers["sizes"]) if str(z) in imported]
                if hit:
                    self.err(f"methods.{name}.teacher_sizes", f"the teacher of size {hit[0]} is imported "
                             f"(teachers.weights): it has no early-epoch checkpoints (teachers.export_epochs) to "
                             f"distil from; leave it out of this method's teacher_sizes")

    # ------------------------------------------------------------------ the recipe and trackers
    @staticmethod
    def train_view(t) -> dict:
        out = {"epochs": t.epochs, "batch_size": t.batch_size, "optimizer": t.optimizer, "lr": t.lr,
               "weight_decay": t.weight_decay, "momentum": t.momentum, "nesterov": t.nesterov,
               "schedule": t.schedule, "gamma": t.gamma}
        # recorded only when off, so the teacher-zoo keys (a hash of the recipe) of existing studies stay valid
        if not t.augment:
            out["augment"] = False
        if t.milestones is not None:
            out["milestones"] = list(t.milestones)
        if t.grad_clip is not None:
            out["grad_clip"] = t.grad_clip
        return out

    @staticmethod
    def tracking_view(t) -> dict:
        out = {}
        if t.mlflow is not None:
            out["mlflow"] = t.mlflow.model_dump()
        if t.wandb is not None:
            out["wandb"] = t.wandb.model_dump()
        if t.tensorboard is not None:
            out["tensorboard"] = {"dir": None, **t.tensorboard}
        return out

    # ------------------------------------------------------------------ methods
    def methods(self, d) -> dict[str, MethodSpec] | None:
        if d is None:
            self.err("methods", "is required (it may be empty, `methods: {}`: the teachers and the baseline only)")
            return None
        if not isinstance(d, dict):
            self.err("methods", f"must be a mapping, got {type(d).__name__}")
            return None
        known = self.m.methods
        out = {}
        for name, m in d.items():  # none: a scratch-only study (teachers and baseline)
            where = join("methods", name)
            if not isinstance(name, str) or name not in known:
                self.err(where, f"unknown method; known: {', '.join(known)}")
                continue
            if m is None:
                m = {}
            if not isinstance(m, dict):
                self.err(where, f"must be a mapping, got {type(m).__name__}")
                continue
            obj = self.validate(known[name], m, where)
            if obj is None:
                continue
            ms = self.method_view(name, obj, m.get("space") if isinstance(m.get("space"), dict) else {})
            if ms is not None:
                out[name] = ms
        return out

    def method_view(self, name: str, obj, raw_space: dict) -> MethodSpec | None:
        cls = self.m.method_classes[name]
        given = _given(obj)
        trials = obj.trials
        search: dict[str, Range] = {}
        fixed: dict[str, Any] = {}
        values = _given(obj.space) if obj.space is not None else {}
        for p in raw_space:  # the spec's order
            if p in values:
                (search if isinstance(values[p], Range) else fixed)[p] = values[p]
        for p, hp in cls.hparams.items():  # unmentioned parameters: searched over their declared range
            if p in search or p in fixed or not hp.searched or trials == 0:
                continue
            if hp.kind == "categorical" and hp.choices:
                search[p] = Range("categorical", choices=tuple(hp.choices))
            elif hp.low is not None and hp.high is not None:
                search[p] = Range(hp.kind, hp.low, hp.high, hp.log)
        if trials == 0 and search:
            self.err(f"methods.{name}.trials", f"0 runs no search, but {', '.join(sorted(search))} "
                     "would be searched; fix them or give trials")
        options = {k: v for k, v in given.items() if k not in ("trials", "space", "teacher_sizes", "confirm_seeds")}
        return MethodSpec(name=name, trials=trials, search=search, fixed=fixed, cls=cls,
                          confirm_seeds=obj.confirm_seeds, teacher_sizes=given.get("teacher_sizes"),
                          assistant_sizes=list(options.get("assistant_sizes") or []), options=options)

    def cross_method(self, methods: dict, teachers: dict | None, shape, confirm, budget: str) -> None:
        n_confirm = confirm.seeds if confirm is not None else 5
        for m in methods.values():
            if m.confirm_seeds is not None and m.confirm_seeds > n_confirm:
                self.err(f"methods.{m.name}.confirm_seeds", f"at most confirm.seeds ({n_confirm}); got {m.confirm_seeds}")
        for m in methods.values():
            if not teachers or not uses_teacher(m.cls):
                continue
            if m.teacher_sizes is None:
                m.teacher_sizes = list(teachers["sizes"])
            elif m.cls.needs_teacher:
                extra = [z for z in m.teacher_sizes if z not in teachers["sizes"]]
                if extra:
                    self.err(f"methods.{m.name}.teacher_sizes",
                             f"{short(extra)} not in teachers.sizes {short(teachers['sizes'])}")
            else:
                for z in m.teacher_sizes:
                    self.check_model(f"methods.{m.name}.teacher_sizes", teacher_model(teachers, z), shape)
            if budget == "joint" and len(m.teacher_sizes) > 1 and m.trials < len(m.teacher_sizes):
                self.err(f"methods.{m.name}.trials", f"with budget 'joint' needs at least one trial per "
                         f"teacher size ({len(m.teacher_sizes)}); got {m.trials}")


class _DatasetCommon(DatasetBase):
    """The common dataset keys, checked when the dataset's name is wrong (its own keys are unknown then)."""

    model_config = ConfigDict(extra="ignore")


__all__ = ["COMMON_HPARAMS", "MAX_PARAMS", "load_spec", "load_spec_plugins", "parse_spec", "spec_plugins"]
