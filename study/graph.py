"""The study as a graph of experiments: what runs, what each one needs, and who it is.

`plan(spec)` turns a validated spec into experiments (no Ray, no storage):

  teachers-<size>         one `scratch` trial per seed of one teacher size (into the zoo); for a
                          size the spec imports (`teachers.weights`), one `import` trial instead:
                          the weights file evaluated on this study's splits, nothing trained
  search-scratch          the no-KD student's own search, when a method searches the recipe
                          (lr, weight_decay): the baseline is held to the same bar
  baseline                the no-KD student on every confirm seed; its configurations are the
                          spec's recipe, the top-k of its search, the recipes methods fix, and
                          the longer schedule a multi-generation method trains for
  search-<m>[-t<size>]    a method's Optuna search (per teacher size with budget `stratified`)
  confirm-<m>[-t<size>]   the top-k configurations of that search (chosen on validation) on
                          every confirm seed: the same seed list as the baseline (paired)

With `search.replicates: R` every search (and the baseline's search, when there
is one) is run R times, independently: replicate r >= 1 is `search-<m>[-t<size>]-rep<r>`
with its own search seeds and sampler seed, and its own confirm,
`confirm-<m>[-t<size>]-rep<r>`, of its top-k on the same shared confirm seeds (and a
`baseline-scratch-rep<r>` when the baseline is searched). Replicate 0 is the
experiment a study without replicates has, under the same name. Teachers, the
baseline's fixed configurations and methods without a search have no search
luck and are not replicated. The verdicts then say what holds in every
replicate (`analysis.search`).

Search trials of replicate r train on the search seeds
`search.seed + r * seeds_per_trial + j`, j < `search.seeds_per_trial` (each search
trial trains one seed per j; its value is their mean, see `study.experiment`).

Edges: a frozen-teacher search waits for its teacher sizes only; online-teacher
and teacher-less searches and the baseline search wait for nothing; a confirm
waits for its search; the baseline for its search (if any). Everything ready runs
at once (see `study.runner`).

An experiment's name is `<stage>-<label>-<hash>`, the hash of its content: the
spec's parts that decide its trials (dataset, models, recipe, method, fixed and
searched parameters, seeds, zoo keys) and never where the study is stored, so a
study copied, renamed or mounted elsewhere continues the same experiments.
A grid experiment's trials are content-addressed too (`<name>-<hash of the
job>`), so a study extended with more seeds reruns only the new ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from trainables.config import size_key
from trainables.data import identity_config

from .spaces import method_params
from .spec import MethodSpec, Range, Spec
from .zoo import teacher_jobs

#: the teachers stage's method of an imported teacher (`trainables.imported`; the loop's IMPORT_METHOD)
IMPORT = "import"

#: confirm (and baseline) seeds start here: disjoint from search seeds (`search.seed` < this)
CONFIRM_SEED0 = 10_000
RECIPE_KEYS = ("lr", "weight_decay")


def digest(obj, n: int = 8) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def confirm_seeds(spec: Spec) -> list[int]:
    """The paired seed list shared by the baseline and every confirm experiment."""
    return [CONFIRM_SEED0 + i for i in range(spec.confirm_seeds)]


@dataclass
class Experiment:
    """One Ray Tune experiment (one Tuner): a grid of jobs or an Optuna search."""

    stage: str                     # teachers | search | baseline | confirm
    label: str                     # e.g. "t16", "kd-t16", "scratch"
    method: str
    base: dict                     # the constants every trial shares (content only, no paths)
    jobs: list[dict] | None = None  # grid: one dict per trial; None for a search
    space: dict[str, Range] | None = None
    constants: dict = field(default_factory=dict)
    trials: int = 0                # a search's trial budget
    max_t: int = 1                 # epochs a full trial trains, over all its generations
    deps: list[str] = field(default_factory=list)   # names of experiments that must finish first
    teacher_sizes: list = field(default_factory=list)  # frozen teacher sizes it reads from the zoo
    zoo_keys: list[str] = field(default_factory=list)  # ...and their zoo entries (identity)
    from_search: str | None = None  # confirm/baseline: the search whose top-k it reruns
    top_k: int = 0
    seeds: list[int] = field(default_factory=list)  # confirm/baseline: the paired seed list
    extra_jobs: list[dict] = field(default_factory=list)  # baseline: configs beside the top-k
    scheduler: str = "none"        # asha | none (searches only)
    per_teacher_size: bool = False  # a joint search's confirm: top-k per teacher size
    replicate: int = 0             # search replicate (0: the study's only search without replicates)
    seeds_per_trial: int = 1       # a search's seeds per trial (search seeds search_seeds())

    @property
    def search_seeds(self) -> list[int]:
        """The seeds every trial of this search trains (one sub-trial each)."""
        first = int(self.base.get("seed", 0))
        return [first + j for j in range(self.seeds_per_trial)]

    @property
    def kind(self) -> str:
        return "search" if self.space is not None else "grid"

    def identity(self) -> dict:
        base = {k: v for k, v in self.base.items() if k not in ("code_version",)}
        return {"stage": self.stage, "method": self.method, "base": base, "jobs": self.jobs,
                "space": {k: vars(v) for k, v in (self.space or {}).items()}, "constants": self.constants,
                "max_t": self.max_t, "zoo": sorted(self.zoo_keys), "from": self.from_search, "top_k": self.top_k,
                "seeds": self.seeds, "extra": self.extra_jobs, "scheduler": self.scheduler,
                "per_size": self.per_teacher_size,
                # at their defaults (replicate 0, one seed per trial) these enter no identity
                **({"replicate": self.replicate} if self.replicate else {}),
                **({"seeds_per_trial": self.seeds_per_trial} if self.seeds_per_trial != 1 else {})}

    @property
    def name(self) -> str:
        # the search budget (trials) and the seed lists are not identity: raising them
        # (`kdstudy run --extend`) continues the same experiment
        ident = self.identity()
        ident.pop("seeds")
        ident["extra"] = [{k: v for k, v in x.items() if k != "_seeds"} for x in ident["extra"]]
        return f"{self.stage}-{self.label}-{digest(ident)}"


def trial_key(exp_name: str, job: dict) -> str:
    """A grid trial's identity: the experiment and the job's content."""
    return f"{exp_name}-{digest({k: v for k, v in job.items() if not k.startswith('_')}, 8)}"


def replicate_label(label: str, replicate: int) -> str:
    """The label of search replicate `replicate` (replicate 0 keeps the label it always had)."""
    return label if not replicate else f"{label}-rep{replicate}"


def search_seed(spec: Spec, replicate: int = 0) -> int:
    """The first search seed of a replicate (its trials train search_seed + j, j < seeds_per_trial)."""
    return spec.search_seed + replicate * spec.seeds_per_trial


def common_base(spec: Spec, stage: str, method: str, replicate: int = 0) -> dict:
    return {"study": spec.name, "stage": stage, "method": method, "seed": search_seed(spec, replicate),
            "dataset": identity_config(spec.dataset),
            "student": spec.student, "train": dict(spec.train), "runtime": {}, "hp": {}}


def method_generations(m: MethodSpec) -> int:
    """Generations a method's trial trains (each with the full epoch budget)."""
    return int(m.cls.planned_generations(m.fixed))


def method_base(spec: Spec, stage: str, m: MethodSpec, replicate: int = 0) -> dict:
    base = common_base(spec, stage, m.name, replicate)
    base["hp"] = {k: v for k, v in m.fixed.items() if k not in RECIPE_KEYS}
    if m.cls.needs_teacher or m.cls.online_teacher:
        base["hp"]["budget_mode"] = spec.budget  # recorded in hparams_json for the capacity-gap chart
    for k in RECIPE_KEYS:
        if k in m.fixed:
            base["train"][k] = m.fixed[k]
    if m.cls.online_teacher:
        base["teachers"] = {size_key(z): spec.teacher_model(z) for z in m.teacher_sizes}
    if m.assistant_sizes:
        opts = {k: v for k, v in spec.student.items() if k != "size"}
        base["assistants"] = {size_key(z): {**opts, "size": z} for z in m.assistant_sizes}
    return base


def _scheduler(spec: Spec, trials: int, max_t: int) -> str:
    """ASHA only where it is a real multi-fidelity search: enough trials and epochs to compare."""
    if spec.scheduler == "none":
        return "none"
    if spec.scheduler == "asha":
        return "asha" if max_t > spec.grace_period else "none"
    # auto: with few trials ASHA only stops trials at their noisiest point
    return "asha" if trials >= 9 and max_t >= 3 * spec.grace_period else "none"


def plan(spec: Spec) -> list[Experiment]:
    """Every experiment of the study, dependencies before dependents."""
    exps: list[Experiment] = []
    seeds = confirm_seeds(spec)
    top_k = spec.top_k
    # the teacher ladder is trained when a method distils from it, or in a study of no method
    # (teachers + baseline: the scratch accuracy of every size)
    uses_frozen = bool(spec.teachers) and (any(m.cls.needs_teacher for m in spec.methods.values())
                                           or not spec.methods)

    # teachers: one experiment per size, so each frozen-teacher search starts when its size is ready
    teacher_exp: dict[str, Experiment] = {}
    keys_by_size: dict[str, list[str]] = {}
    if uses_frozen:
        all_jobs = teacher_jobs(spec)
        for job in all_jobs:
            keys_by_size.setdefault(size_key(job["size"]), []).append(job["key"])
        for size in spec.teacher_sizes:
            sk = size_key(size)
            imported = [j for j in all_jobs if size_key(j["size"]) == sk and j.get("imported")]
            if imported:  # evaluated, not trained: no recipe, one entry whatever teachers.seeds
                base = common_base(spec, "teachers", IMPORT)
                base["role"] = "teacher"
                base["train"] = {}
                base.pop("student")
                jobs = [{"seed": j["seed"], "student": j["model"], "_zoo_key": j["key"]} for j in imported]
                exp = Experiment("teachers", f"t{sk}", IMPORT, base, jobs=jobs, max_t=1, zoo_keys=keys_by_size[sk])
                teacher_exp[sk] = exp
                exps.append(exp)
                continue
            base = common_base(spec, "teachers", "scratch")
            base["role"] = "teacher"
            base["train"]["epochs"] = spec.teachers["epochs"]
            jobs = [{"seed": j["seed"], "student": j["model"], "_zoo_key": j["key"]}
                    for j in all_jobs if size_key(j["size"]) == sk]
            exp = Experiment("teachers", f"t{sk}", "scratch", base, jobs=jobs, max_t=spec.teachers["epochs"],
                             zoo_keys=keys_by_size[sk])
            teacher_exp[sk] = exp
            exps.append(exp)

    # the baseline: searched like the methods when they search the recipe
    recipe_space: dict[str, Range] = {}
    recipe_trials = 0
    extra: list[dict] = []
    for m in spec.methods.values():
        for k in RECIPE_KEYS:
            if k in m.search:
                r = m.search[k]
                old = recipe_space.get(k)
                recipe_space[k] = r if old is None else Range(r.kind, min(old.low, r.low), max(old.high, r.high),
                                                              r.log and old.log)
                recipe_trials = max(recipe_trials, m.trials)
        fixed = {k: m.fixed[k] for k in RECIPE_KEYS if k in m.fixed and m.fixed[k] != spec.train.get(k)}
        if fixed and fixed not in extra:
            extra.append(fixed)
        gens = method_generations(m)
        if gens > 1:  # the same epochs per model as the multi-generation method, on its seeds
            n = m.confirm_seeds or spec.confirm_seeds
            long = {"epochs": int(spec.train["epochs"]) * gens}
            old = next((x for x in extra if {k: v for k, v in x.items() if k != "_seeds"} == long), None)
            if old is None:
                extra.append({**long, "_seeds": n})
            else:
                old["_seeds"] = max(old.get("_seeds", n), n)
    if spec.confirm_seeds > 0:
        base = common_base(spec, "baseline", "scratch")
        long_t = max([int(spec.train["epochs"])] + [int(e["epochs"]) for e in extra if "epochs" in e])
        for r in range(spec.replicates if recipe_space else 1):
            deps, from_search = [], None
            if recipe_space:
                sbase = common_base(spec, "search", "scratch", r)
                search = Experiment("search", replicate_label("baseline", r), "scratch", sbase, space=recipe_space,
                                    trials=recipe_trials, max_t=int(spec.train["epochs"]),
                                    scheduler=_scheduler(spec, recipe_trials, int(spec.train["epochs"])),
                                    replicate=r, seeds_per_trial=spec.seeds_per_trial)
                exps.append(search)
                deps, from_search = [search.name], search.name
            # every replicate's baseline is complete (its search's top-k beside the fixed recipes), so each
            # replicate's verdicts are those of a study of its own
            exps.append(Experiment("baseline", replicate_label("scratch", r), "scratch", base, deps=deps,
                                   from_search=from_search, top_k=top_k if from_search else 0, seeds=seeds,
                                   extra_jobs=[{}] + extra, max_t=long_t, replicate=r))

    export_epochs = spec.teachers["export_epochs"] if spec.teachers else []
    for m in spec.methods.values():
        gens = method_generations(m)
        max_t = int(spec.train["epochs"]) * gens
        frozen = bool(m.cls.needs_teacher)
        uses_teacher = frozen or m.cls.online_teacher
        if uses_teacher and spec.budget == "stratified":
            groups = [([z], f"{m.name}-t{size_key(z)}", {"teacher_size": z}) for z in m.teacher_sizes]
        else:
            groups = [(list(m.teacher_sizes or []) if uses_teacher else [], m.name, {})]
        for sizes, label, constants in groups:
            space = method_params(m, None if constants or not uses_teacher else sizes, export_epochs)
            deps = [teacher_exp[size_key(z)].name for z in sizes] if frozen else []
            zoo = [k for z in sizes for k in keys_by_size.get(size_key(z), [])] if frozen else []
            replicates = range(spec.replicates) if m.trials > 0 else range(1)  # no search, no search luck
            for r in replicates:
                rlabel = replicate_label(label, r)
                cdeps, from_search, fixed_jobs = list(deps), None, []
                if m.trials > 0:
                    search = Experiment("search", rlabel, m.name, method_base(spec, "search", m, r), space=space,
                                        constants=constants, trials=m.trials, max_t=max_t, deps=deps,
                                        teacher_sizes=sizes if frozen else [], zoo_keys=zoo,
                                        scheduler=_scheduler(spec, m.trials, max_t), replicate=r,
                                        seeds_per_trial=spec.seeds_per_trial)
                    exps.append(search)
                    cdeps, from_search = [search.name] + deps, search.name
                else:  # no search: the fixed configuration, at every teacher size of this experiment
                    fixed_jobs = [dict(constants)] if constants or not uses_teacher else \
                        [{"teacher_size": z} for z in sizes]
                if spec.confirm_seeds > 0:
                    cbase = method_base(spec, "confirm", m)
                    exps.append(Experiment("confirm", rlabel, m.name, cbase, deps=cdeps,
                                           from_search=from_search, top_k=top_k if from_search else 0,
                                           extra_jobs=fixed_jobs,
                                           seeds=seeds[:m.confirm_seeds or len(seeds)], max_t=max_t,
                                           teacher_sizes=sizes if frozen else [], zoo_keys=zoo,
                                           per_teacher_size=uses_teacher and not constants, replicate=r))
    return exps
