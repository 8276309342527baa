"""The validated spec as the inner code sees it: `Spec` and `MethodSpec`, plain typed objects.

`study.graph`, `study.runner`, `study.plan` and `study.zoo` read these and trust
them; only `study.spec` builds them (from the typed definition in
`study.spec.model`, after every check has passed). The dicts (`dataset`,
`student`, `teachers`, `train`, ...) hold exactly what names experiments and zoo
entries: an option at its default that was not written in the spec is not in
them, so adding an option never moves an identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..ranges import Range

#: keys of the `teachers` section that describe the ladder, not the model
TEACHER_LADDER_KEYS = ("sizes", "seeds", "epochs", "export_epochs", "weights")


def teacher_model(teachers: dict, size) -> dict:
    """The model config of the teacher of `size` (the section's model options plus the size)."""
    return {**{k: v for k, v in teachers.items() if k not in TEACHER_LADDER_KEYS}, "size": size}


def dataset_shape(dataset: dict) -> tuple[tuple[int, ...], int]:
    """(input shape, number of classes) of a spec's dataset, known without loading it (the dataset
    registry's facts; raises `trainables.data.DatasetError` naming the problem)."""
    from trainables.data import dataset_facts

    facts = dataset_facts(dataset)
    return tuple(facts.input_shape), int(facts.num_classes)


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
    #: the method's own spec options (`Method.spec_options`), as given (TAKD's assistant_sizes)
    options: dict[str, Any] = field(default_factory=dict)


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
    delta: float = 0.5
    level: float = 0.95
    raw: dict = field(repr=False, default_factory=dict)
    #: search.sampler: auto | tpe | qmc | gp | random
    sampler: str = "auto"
    #: search.replicates: independent repeats of every search (seeded apart)
    replicates: int = 1
    #: search.seeds_per_trial: training seeds each search trial averages over
    seeds_per_trial: int = 1
    #: tracking: {mlflow: {...}, wandb: {...}, tensorboard: {...}} for the trackers switched on; {} when off
    tracking: dict = field(default_factory=dict)
    #: plugins as written in the spec
    plugins: list = field(default_factory=list)
    #: one record per plug-in (`trainables.plugins`): {ref, kind, module, path, sha256}
    plugin_sources: list = field(default_factory=list)
    #: the absolute folder relative plug-in paths (and teacher weights) were resolved against
    spec_dir: str | None = None

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
