"""`kdstudy plan`: the experiment graph, its work, and the predicted makespan on N slots.

A cluster is sized before it is paid for. This module (no Ray) answers, for a
spec: which experiments run and what each waits for, how many trials and
trial-epochs each stage costs, the critical path, and how long the study takes
on N slots — run the way `study.runner` runs it ("graph") and the way the old
runner did ("serial": one experiment after another).

Model of the runner (`simulate`)
--------------------------------
* A **slot** holds one trial: the resources of one trial. By default the
  slots are what this machine packs (`packing`: min of CPUs / `resources.cpu`
  and GPUs x floor(1 / `resources.gpu`)), or one `--node CPUS:GPUS`; the plan
  warns when a node's CPUs leave part of its GPU share idle (`idle_gpu_warning`).
* **graph**: every experiment whose dependencies are finished is launched at
  once, in plan order, at most `max_experiments` running. After `start_s`
  (Tuner and searcher start-up) it keeps at most `max_concurrent` trials
  requested; requests of all experiments wait in one first-come first-served
  queue for a free slot (Ray grants pending trial requests roughly in order).
  After its last trial, `end_s` passes (verification) before it counts as
  finished and its dependents are launched.
* **serial**: the same, one experiment at a time in plan order.
* A **trial** holds its slot for `overhead_s + epochs x epoch_s`; a trial of a
  multi-generation method trains `epochs x generations` (its `max_t`).
* **ASHA** (time_attr "progress", reduction factor 3, `stop_last_trials`): rungs
  at `grace_period x 3^k` progress below `max_t`, as Tune builds them. A trial
  reaching a rung is stopped if its value is below the 66.7th percentile of the
  values recorded at that rung *before* it (Tune's `cutoff`); a stopped trial
  frees its slot at once. Assumption: each trial has a fixed quality drawn from
  a seeded RNG and ranks the same at every rung; `predict` reports the median
  makespan over `SEEDS` draws.

Duration model (`DurationModel`)
--------------------------------
Seconds per epoch of a trial come from, first match wins: `<stage>:<method>=S`,
`<method>=S`, `teacher=S` (the teachers stage) / `student=S` (every other
stage), a plain `S` (every trial) given with `--epoch-seconds`; else from the
trial's own models: FLOPs of one epoch x seconds per FLOP, plus its batches x
seconds per batch (the per-step cost that dominates tiny models on a CPU).
FLOPs per sample: 3 x forward for every model that trains (forward + backward),
1 x forward for a frozen one (a KD teacher, TriKD's anchor, TAKD's frozen
links), over the training split, plus a forward of the evaluated models over
validation and test: each method says what its models cost (`Method.sample_flops`,
the default read from its flags), so a plug-in is planned as a built-in is. An
imported teacher is one evaluation over validation and test, never a training
epoch. So a larger teacher's chain costs what its FLOPs cost.

Seconds per FLOP and per batch are, uncalibrated, rough defaults
(`ASSUMED_GPU_FLOPS` x resources.gpu, or `ASSUMED_CPU_FLOPS` x resources.cpu;
`ASSUMED_CPU_BATCH_S`): orders of magnitude only. `--from-results STUDY`
calibrates them on a finished study (`calibrate_from_results`): both are fitted
to every timed trial of it, each trial's FLOPs counted for its own
architectures, and a factor per `<stage>:<method>` (then per method) keeps
what the model misses of a method (its loss, its data path); a method the
study did not run keeps factor 1.
"""

from __future__ import annotations

import heapq
import math
import os
import random
import statistics
from dataclasses import dataclass, field
from typing import Iterable

from . import graph
from .admission import admits, demand_of, launch_order

#: effective training FLOP/s of one whole GPU on small CIFAR models at batch 64-128 (far below peak:
#: kernel-launch bound); a slot with resources.gpu = 0.25 gets a quarter. A rough default.
ASSUMED_GPU_FLOPS = 2e12
#: effective training FLOP/s of one CPU core (PyTorch, small models), and seconds per batch outside
#: the arithmetic (Python, the optimiser step, small kernels). Rough defaults, measured with one
#: thread on a shared 2-core machine: a cnn1d-8 / -32 / -128 epoch of MNIST-1D (7,200 training and
#: 2,800 evaluated samples, batch 128) took 0.28 / 0.89 / 9.7 s, i.e. about 3e10 FLOP/s and 4 ms
#: per batch; a trial adds its own costs (`calibrate_from_results` measures them).
ASSUMED_CPU_FLOPS = 5e10
ASSUMED_CPU_BATCH_S = 0.005
#: seconds a trial holds its slot outside its epochs (process, data, models), when not calibrated
DEFAULT_TRIAL_OVERHEAD_S = 10.0
#: seconds an experiment takes to start (Tuner, searcher) and to be verified, when not calibrated
DEFAULT_EXP_START_S = 5.0
DEFAULT_EXP_END_S = 1.0
#: ASHA reduction factor (study.experiment)
REDUCTION_FACTOR = 3
#: seeds of the trial-quality draw whose median makespan is reported when ASHA is in the plan
SEEDS = (0, 1, 2, 3, 4)


# --------------------------------------------------------------------------- the simulator


@dataclass
class TrialWork:
    """One trial: `epochs` of progress at `epoch_s` each, plus `overhead_s` on its slot."""

    epochs: int
    epoch_s: float
    overhead_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.overhead_s + self.epochs * self.epoch_s


@dataclass
class Work:
    """What one experiment costs: its trials (in request order) and its own overheads."""

    trials: list[TrialWork]
    start_s: float = 0.0            # launch -> first trial requested
    end_s: float = 0.0              # last trial ended -> finished (dependents may start)
    grace_period: int | None = None  # set: ASHA stops trials at its rungs

    def rungs(self) -> list[int]:
        """Tune's ASHA milestones (ascending) for this experiment's max progress."""
        if not self.grace_period or not self.trials:
            return []
        max_t = max(t.epochs for t in self.trials)
        if max_t <= self.grace_period:
            return []
        n = int(math.log(max_t / self.grace_period) / math.log(REDUCTION_FACTOR) + 1)
        return [self.grace_period * REDUCTION_FACTOR ** k for k in range(n)]


@dataclass
class SimResult:
    makespan: float
    start: dict[str, float]          # experiment name -> launched at
    end: dict[str, float]            # experiment name -> finished at
    busy: float                      # slot-seconds held by trials
    slots: float
    trials: int = 0
    stopped: int = 0                 # trials ASHA stopped early
    trial_epochs: int = 0            # epochs actually trained

    @property
    def utilisation(self) -> float:
        if self.makespan <= 0 or math.isinf(self.slots):
            return float("nan")
        return self.busy / (self.slots * self.makespan)


def _percentile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile."""
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def qualities(seed: int, name: str, n: int) -> list[float]:
    """The trials' qualities (ASHA ranks by them): one seeded draw per experiment, so an experiment
    gets the same draw alone (critical path) as in the whole study."""
    rng = random.Random(f"{seed}:{name}")
    return [rng.random() for _ in range(n)]


def simulate(exps, slots: float, durations: dict[str, Work], policy: str = "graph", max_concurrent: int = 2,
             max_experiments: int | None = None, seed: int = 0) -> SimResult:
    """Discrete-event simulation of running `exps` (objects with `.name` and `.deps`, in plan order).

    `durations[name]` is the experiment's `Work`. `slots` may be `math.inf`. The graph policy is
    the runner's: ready experiments start in priority order (`priority_rank`) while `admits`.
    """
    if policy not in ("graph", "serial"):
        raise ValueError(f"policy must be graph or serial, got {policy!r}")
    exps = list(exps)
    if policy == "graph":
        order = launch_order(exps, {n: sum(t.seconds for t in w.trials) for n, w in durations.items()})
    else:
        order = exps
    cap = 1 if policy == "serial" else (max_experiments or len(exps) or 1)
    names = [e.name for e in exps]
    if policy == "serial":
        deps = {n: [names[i - 1]] if i else [] for i, n in enumerate(names)}
    else:
        deps = {n: list(e.deps) for n, e in zip(names, exps)}
    quality = {n: qualities(seed, n, len(durations[n].trials)) for n in names}
    state = {n: "todo" for n in names}
    res = SimResult(0.0, {}, {}, 0.0, slots)
    events: list = []
    seq = 0
    free = slots
    queue: list[tuple[str, int]] = []          # FIFO of trial requests waiting for a slot
    qhead = 0
    nxt = {n: 0 for n in names}                # next trial to request
    inflight = {n: 0 for n in names}           # requested and not ended
    ended = {n: 0 for n in names}
    rungs = {n: durations[n].rungs() for n in names}
    recorded = {n: [[] for _ in rungs[n]] for n in names}
    running = 0
    now = 0.0

    def push(t, kind, *payload):
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, payload))
        seq += 1

    def demand() -> float:
        return sum(demand_of(len(durations[n].trials), ended[n], inflight[n] if nxt[n] else 0, max_concurrent)
                   for n, st in state.items() if st == "running")

    order_names = [e.name for e in order]  # a name is a digest of the experiment: computed once here

    def launch_ready():
        nonlocal running
        wanted = demand() if policy == "graph" else 0.0  # changes only when an experiment starts
        for n in order_names:
            if running >= cap or (policy == "graph" and not admits(wanted, slots, running, max_experiments)):
                return
            if state[n] == "todo" and all(state[d] == "done" for d in deps[n]):
                state[n] = "running"
                running += 1
                res.start[n] = now
                push(now + durations[n].start_s, "ready", n)
                if policy == "graph":
                    wanted = demand()

    def request(name):
        w = durations[name]
        while inflight[name] < max_concurrent and nxt[name] < len(w.trials):
            queue.append((name, nxt[name]))
            nxt[name] += 1
            inflight[name] += 1

    def dispatch():
        nonlocal free, qhead
        while free >= 1 and qhead < len(queue):
            name, i = queue[qhead]
            qhead += 1
            free -= 1
            t = durations[name].trials[i]
            res.trials += 1
            _next_milestone(name, i, now, now + t.overhead_s, 0)

    def _next_milestone(name, i, started, t0, k):
        """Schedule trial i's next rung check (k) or its end; t0 = when progress 0 began."""
        t = durations[name].trials[i]
        rs = rungs[name]
        while k < len(rs) and rs[k] >= t.epochs:
            k = len(rs)
        if k < len(rs):
            push(t0 + rs[k] * t.epoch_s, "rung", name, i, started, t0, k)
        else:
            push(t0 + t.epochs * t.epoch_s, "end", name, i, started, t.epochs)

    def finish_exp(name):
        nonlocal running
        state[name] = "done"
        running -= 1
        res.end[name] = now
        launch_ready()

    launch_ready()
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "ready":
            name = payload[0]
            if not durations[name].trials:
                push(now + durations[name].end_s, "done", name)
            else:
                request(name)
        elif kind == "rung":
            name, i, started, t0, k = payload
            rec = recorded[name][k]
            q = quality[name][i]
            stop = bool(rec) and q < _percentile(rec, 100 * (1 - 1 / REDUCTION_FACTOR))
            rec.append(q)
            if stop:
                res.stopped += 1
                push(now, "end", name, i, started, rungs[name][k])
            else:
                _next_milestone(name, i, started, t0, k + 1)
        elif kind == "end":
            name, i, started, epochs = payload
            free += 1
            res.busy += now - started
            res.trial_epochs += epochs
            inflight[name] -= 1
            ended[name] += 1
            request(name)
            launch_ready()  # a slot's demand went down: another experiment may start
            if ended[name] == len(durations[name].trials):
                push(now + durations[name].end_s, "done", name)
        elif kind == "done":
            finish_exp(payload[0])
        dispatch()
    res.makespan = max(res.end.values(), default=0.0)
    missing = [n for n, s in state.items() if s != "done"]
    if missing:  # a dependency outside the list, or a cycle
        raise ValueError(f"experiments never ready: {missing}")
    return res


def predict(exps, slots: float, durations: dict[str, Work], policy: str = "graph", max_concurrent: int = 2,
            max_experiments: int | None = None, seeds: Iterable[int] = SEEDS) -> SimResult:
    """The simulation whose makespan is the median over the ASHA quality draws (one draw without ASHA)."""
    asha = any(durations[e.name].rungs() for e in exps)
    runs = [simulate(exps, slots, durations, policy, max_concurrent, max_experiments, seed=s)
            for s in (list(seeds) if asha else [0])]
    runs.sort(key=lambda r: r.makespan)
    return runs[len(runs) // 2]


def critical_path(exps, durations: dict[str, Work], max_concurrent: int = 2,
                  seeds: Iterable[int] = SEEDS) -> tuple[list[str], float]:
    """The chain of experiments that is longest with unlimited slots (each still capped at
    `max_concurrent` trials), and its length in seconds (the median over the ASHA draws)."""
    exps = list(exps)
    asha = any(durations[e.name].rungs() for e in exps)
    runs = []
    for seed in (list(seeds) if asha else [0]):
        alone = {e.name: simulate([_Alone(e.name)], math.inf, {e.name: durations[e.name]}, "graph",
                                  max_concurrent, seed=seed).makespan for e in exps}
        finish: dict[str, float] = {}
        prev: dict[str, str | None] = {}
        for e in exps:  # plan order: dependencies first
            before = max(e.deps, key=lambda d: finish[d], default=None)
            finish[e.name] = (finish[before] if before else 0.0) + alone[e.name]
            prev[e.name] = before
        if not finish:
            return [], 0.0
        last = max(finish, key=finish.get)
        chain = [last]
        while prev[chain[-1]]:
            chain.append(prev[chain[-1]])
        runs.append((finish[last], chain[::-1]))
    runs.sort(key=lambda r: r[0])
    length, chain = runs[len(runs) // 2]
    return chain, length


@dataclass
class _Alone:
    name: str
    deps: list = field(default_factory=list)


# --------------------------------------------------------------------------- durations of a spec


def parse_epoch_seconds(items: Iterable[str] | None) -> dict[str, float]:
    """`["30", "teacher=90", "kd=40"]` -> {"*": 30, "teacher": 90, "kd": 40}."""
    out: dict[str, float] = {}
    for item in items or []:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            key, _, val = part.rpartition("=")
            try:
                sec = float(val)
            except ValueError:
                raise ValueError(f"--epoch-seconds {part!r}: expected [ROLE=]SECONDS, e.g. 30 or teacher=90") from None
            if not sec > 0:
                raise ValueError(f"--epoch-seconds {part!r}: seconds must be positive")
            out[key.strip() or "*"] = sec
    return out


@dataclass
class Calibration:
    """Timing measured from a study's results (`calibrate_from_results`)."""

    epoch_s: dict[str, float]       # "<stage>:<method>" -> mean seconds per epoch (training + evaluation)
    trial_overhead_s: float         # mean seconds a trial spends before its first step
    exp_start_s: float | None = None  # a grid experiment's start-up (None: not measured)
    exp_end_s: float | None = None
    search_start_s: float | None = None  # a search's start-up (Optuna study, searcher, first suggestions)
    s_per_flop: float | None = None  # fitted seconds per FLOP of a slot (None: not measured)
    s_per_batch: float | None = None  # fitted seconds per batch outside the arithmetic
    factor: dict[str, float] = field(default_factory=dict)  # "<stage>:<method>" and "<method>" -> measured / fitted


class DurationModel:
    """Seconds per epoch and overheads of every trial of a spec's experiments (see module docstring)."""

    def __init__(self, spec, epoch_seconds: dict[str, float] | None = None, trial_overhead_s: float | None = None,
                 exp_start_s: float | None = None, exp_end_s: float | None = None,
                 search_start_s: float | None = None, s_per_flop: float | None = None,
                 s_per_batch: float | None = None, factor: dict[str, float] | None = None):
        self.spec = spec
        self.given = dict(epoch_seconds or {})
        self.trial_overhead_s = DEFAULT_TRIAL_OVERHEAD_S if trial_overhead_s is None else trial_overhead_s
        self.exp_start_s = DEFAULT_EXP_START_S if exp_start_s is None else exp_start_s
        self.exp_end_s = DEFAULT_EXP_END_S if exp_end_s is None else exp_end_s
        self.search_start_s = self.exp_start_s if search_start_s is None else search_start_s
        self.calibrated = s_per_flop is not None
        self.s_per_flop = 1.0 / self.throughput() if s_per_flop is None else s_per_flop
        gpu = float(spec.resources.get("gpu") or 0) > 0
        self.s_per_batch = (0.0 if gpu else ASSUMED_CPU_BATCH_S) if s_per_batch is None else s_per_batch
        self.factor = dict(factor or {})
        self._flops: dict[str, float] = {}
        self.estimated = False  # True once any epoch came from the uncalibrated FLOPs estimate

    @classmethod
    def from_calibration(cls, spec, cal: Calibration, epoch_seconds: dict[str, float] | None = None,
                         trial_overhead_s: float | None = None) -> "DurationModel":
        """A model calibrated on a finished study: its seconds per FLOP and per batch and its method
        factors (a study without FLOPs to fit keeps its measured seconds per `<stage>:<method>`)."""
        given = {**({} if cal.s_per_flop is not None else cal.epoch_s), **(epoch_seconds or {})}
        return cls(spec, given, cal.trial_overhead_s if trial_overhead_s is None else trial_overhead_s,
                   cal.exp_start_s, cal.exp_end_s, cal.search_start_s, cal.s_per_flop, cal.s_per_batch, cal.factor)

    # -- FLOPs -----------------------------------------------------------------
    def flops(self, cfg: dict) -> float:
        """Forward FLOPs per sample of a model config (counted once per architecture, no GPU)."""
        import json

        key = json.dumps(cfg, sort_keys=True, default=str)
        if key not in self._flops:
            import torch

            from trainables.models import build_meta, build_model, count_flops

            in_shape, classes = self.spec.shape
            try:  # shapes only (the meta device): no memory, no arithmetic, any size or family
                flops = count_flops(build_meta(cfg, in_shape, classes), in_shape)
            except (NotImplementedError, RuntimeError):  # an operation without a meta kernel: on the CPU
                with torch.random.fork_rng(devices=[]):
                    model = build_model(cfg, in_shape, classes)
                flops = count_flops(model, in_shape)
            self._flops[key] = float(flops)
        return self._flops[key]

    def samples(self) -> tuple[int, int]:
        """(training samples, evaluated samples per epoch: validation + test), from the dataset's
        registry entry (`trainables.data.dataset_facts`: known without loading the data)."""
        from trainables.data import dataset_facts

        facts = dataset_facts(self.spec.dataset)
        return facts.n_train, facts.n_val + facts.n_test

    def throughput(self) -> float:
        gpu = float(self.spec.resources.get("gpu") or 0)
        if gpu > 0:
            return ASSUMED_GPU_FLOPS * gpu
        return ASSUMED_CPU_FLOPS * float(self.spec.resources.get("cpu") or 1)

    def epoch_work(self, method: str, student: dict, teacher_size=None, generations: int = 1) -> tuple[float, float]:
        """(FLOPs, batches) of one epoch of a trial: training and evaluation, from its models' FLOPs
        (see the module docstring)."""
        from trainables.methods import Method, available_methods

        n_train, n_eval = self.samples()
        bs = int(self.spec.train.get("batch_size", 128))
        if method == graph.IMPORT:  # an imported teacher is evaluated, not trained
            return n_eval * self.flops(student), math.ceil(n_eval / bs)
        cls = available_methods().get(method)
        teacher = self.spec.teacher_model(teacher_size) if teacher_size is not None else None
        m = self.spec.methods.get(method)  # what the method says its models cost, a plug-in's as a built-in's
        train, evaluated = (cls or Method).sample_flops(self.flops, student, teacher, generations,
                                                        m.options if m else {})
        if cls is not None:  # a loss that is not linear in the batch (RKD's angle: N³)
            train += cls.loss_flops(bs) / bs
        return n_train * train + n_eval * evaluated, math.ceil(n_train / bs) + math.ceil(n_eval / bs)

    def estimate_epoch_s(self, method: str, student: dict, teacher_size=None, generations: int = 1,
                         stage: str | None = None) -> float:
        """Seconds per epoch from the trial's FLOPs and batches (see the module docstring)."""
        flops, batches = self.epoch_work(method, student, teacher_size, generations)
        factor = self.factor.get(f"{stage}:{method}", self.factor.get(method, 1.0))
        self.estimated = self.estimated or not self.calibrated
        return factor * (flops * self.s_per_flop + batches * self.s_per_batch)

    # -- per experiment ----------------------------------------------------------
    def epoch_s(self, stage: str, method: str, student: dict, teacher_size=None, generations: int = 1) -> float:
        g = self.given
        role = "teacher" if stage == "teachers" else "student"
        for key in (f"{stage}:{method}", method, role, "*"):
            if key in g:
                return g[key]
        other = [v for k, v in g.items() if k.endswith(f":{method}")]  # measured in another stage
        if other:
            return statistics.fmean(other)
        return self.estimate_epoch_s(method, student, teacher_size, generations, stage)

    def work(self, e, search_trials: int | None = None) -> Work:
        """The trials of one `study.graph.Experiment` known at plan time (`search_trials`: for a
        confirm, how many trials the search it confirms runs, when known)."""
        spec = self.spec
        ov = self.trial_overhead_s
        epochs = int(spec.train["epochs"])
        if e.stage == "teachers":
            if e.method == graph.IMPORT:  # loaded and evaluated once (its accuracies), never trained
                trials = [TrialWork(1, self.import_s(j["student"]), ov) for j in e.jobs]
            else:
                trials = [TrialWork(e.max_t, self.epoch_s("teachers", "scratch", j["student"]), ov) for j in e.jobs]
            return Work(trials, self.exp_start_s, self.exp_end_s)
        m = spec.methods.get(e.method)
        gens = graph.method_generations(m) if m is not None else 1
        sizes = self.teacher_sizes(e)
        if e.stage == "baseline":
            configs = [dict(c) for c in e.extra_jobs] + [{}] * (e.top_k if e.from_search else 0)
            ep = self.epoch_s("baseline", "scratch", spec.student)
            trials = [TrialWork(int(c.get("epochs", epochs)), ep, ov) for c in configs
                      for _ in e.seeds[:c.get("_seeds", len(e.seeds))]]
            return Work(trials, self.exp_start_s, self.exp_end_s)
        if e.stage == "search":
            trials = []
            for i in range(e.trials * e.seeds_per_trial):  # a search trial of k seeds is k runs
                z = sizes[(i // e.seeds_per_trial) % len(sizes)] if sizes else None  # a joint search: sizes evenly
                trials.append(TrialWork(e.max_t, self.epoch_s("search", e.method, spec.student, z, gens), ov))
            grace = spec.grace_period if e.scheduler == "asha" else None
            return Work(trials, self.search_start_s, self.exp_end_s, grace)
        # confirm: the top_k configurations (per teacher size for a joint search) x the confirm seeds;
        # a size has no more configurations than search trials (a joint search spreads them evenly)
        groups = sizes if (e.per_teacher_size and sizes) else [sizes[0] if sizes else None]
        trials = []
        for i, z in enumerate(groups):
            k = e.top_k
            if search_trials is not None:
                k = min(k, search_trials // len(groups) + (i < search_trials % len(groups)))
            trials += [TrialWork(e.max_t, self.epoch_s("confirm", e.method, spec.student, z, gens), ov)
                       for _ in range(k) for _ in e.seeds]
        trials += [TrialWork(e.max_t, self.epoch_s("confirm", e.method, spec.student,
                                                   c.get("teacher_size", sizes[0] if sizes else None), gens), ov)
                   for c in e.extra_jobs for _ in e.seeds]  # a method confirmed without a search
        return Work(trials, self.exp_start_s, self.exp_end_s)

    def import_s(self, teacher: dict) -> float:
        """Seconds to import a teacher: one evaluation of it on validation and test (measured as
        ``teachers:import`` when given, else from its FLOPs), not an epoch of training it."""
        if f"teachers:{graph.IMPORT}" in self.given:
            return self.given[f"teachers:{graph.IMPORT}"]
        return self.estimate_epoch_s(graph.IMPORT, teacher, stage="teachers")

    def teacher_sizes(self, e) -> list:
        if "teacher_size" in e.constants:
            return [e.constants["teacher_size"]]
        if e.teacher_sizes:
            return list(e.teacher_sizes)
        m = self.spec.methods.get(e.method)
        if m is not None and m.cls is not None and m.cls.online_teacher and m.teacher_sizes:
            return list(m.teacher_sizes)
        return []

    def works(self, exps) -> dict[str, Work]:
        searched = {e.name: e.trials for e in exps if e.stage == "search"}
        return {e.name: self.work(e, searched.get(e.from_search) if e.stage == "confirm" else None)
                for e in exps}


# --------------------------------------------------------------------------- calibration


def calibrate_from_results(study_dir: str) -> Calibration:
    """Seconds per FLOP and per batch, factors per (stage, method), per-trial overhead and
    per-experiment start/end overheads, measured from a study's Parquet (schema v2) and its
    finished markers, read through the study's storage (a local folder or object storage).

    Epoch = `epoch_time_s + eval_time_s` (one row per trial x generation x epoch; roles and
    exits share the timing). Each timed trial's FLOPs and batches per epoch are counted for its
    own models (`DurationModel.epoch_work` on the study's spec), and seconds per FLOP and per
    batch are fitted to every trial at once (non-negative least squares on relative error), so
    a larger teacher's epochs cost what its FLOPs cost; a factor per `<stage>:<method>` (and per
    method) is the measured epochs over the fitted ones. Trial overhead = mean `setup_time_s`.
    An experiment's start overhead = its earliest trial start (first row's timestamp minus that
    epoch, its evaluation and the setup) minus its launch (the latest `finished_at` of its
    dependencies' markers): the smallest such value, for grid experiments and searches (Optuna)
    apart (an experiment whose first trial did not wait for a slot); experiments without
    dependencies are not measured (their launch is not recorded). End overhead = marker
    `finished_at` minus its last row's timestamp (median). A study whose spec cannot be read
    keeps the mean seconds per epoch of each `<stage>:<method>` instead of the fit.
    """
    from analysis.load import load

    from .folder import StudyFolder

    df = load(study_dir)
    df = df[df["epoch_time_s"].notna()]
    rows = df.sort_values("timestamp").drop_duplicates(["stage", "trial_id", "generation", "epoch"])
    rows = rows.assign(epoch_s=rows["epoch_time_s"] + rows["eval_time_s"].fillna(0.0),
                       ts=rows["timestamp"].map(lambda t: t.timestamp()))
    epoch_s = {f"{s}:{m}": float(g["epoch_s"].mean()) for (s, m), g in rows.groupby(["stage", "method"])}
    first = rows.sort_values(["generation", "epoch"]).groupby("trial_id").head(1)
    overhead = float(first["setup_time_s"].dropna().mean()) if first["setup_time_s"].notna().any() else 0.0
    first = first.assign(began=first["ts"] - first["epoch_s"] - first["setup_time_s"].fillna(0.0))
    begins = first.groupby("experiment")["began"].min().to_dict()
    lasts = rows.groupby("experiment")["ts"].max().to_dict()
    folder = StudyFolder(study_dir)
    markers = folder.markers()
    deps: dict[str, list[str]] = {}
    spec = None
    try:
        spec = folder.saved_spec()
        if spec is not None:
            deps = {e.name: e.deps for e in graph.plan(spec)}
    except Exception:  # an older or foreign study folder: no start overhead, no fit
        deps, spec = {}, None
    starts: dict[str, list[float]] = {"grid": [], "search": []}
    ends = []
    for name, began in begins.items():
        if name in markers and name in lasts:
            ends.append(markers[name]["finished_at"] - lasts[name])
        d = deps.get(name, [])
        if d and all(x in markers for x in d):
            kind = "search" if name.startswith("search-") else "grid"
            starts[kind].append(began - max(markers[x]["finished_at"] for x in d))
    grid = max(0.0, min(starts["grid"])) if starts["grid"] else None
    search = max(0.0, min(starts["search"])) if starts["search"] else None
    exp_end = max(0.0, statistics.median(ends)) if ends else None
    fit = _fit_epochs(spec, rows) if spec is not None else None
    s_per_flop, s_per_batch, factor = fit if fit is not None else (None, None, {})
    return Calibration(epoch_s, overhead, grid if grid is not None else search, exp_end, search,
                       s_per_flop, s_per_batch, factor)


def _fit_epochs(spec, rows) -> tuple[float, float, dict[str, float]] | None:
    """(seconds per FLOP, seconds per batch, factors) fitted to the timed trials in `rows` (one row per
    trial x generation x epoch, column `epoch_s`), or None when no trial's work can be counted."""
    import numpy as np
    from scipy.optimize import nnls

    model = DurationModel(spec)
    trials = []
    for (stage, method, trial), g in rows.groupby(["stage", "method", "trial_id"], sort=True):
        size = g["teacher_size"].dropna()
        names = g["teacher_size_name"].dropna() if "teacher_size_name" in g else []
        size = _size_of(spec, float(size.iloc[0]), names.iloc[0] if len(names) else None) if len(size) else None
        gens = g["generations"].dropna() if "generations" in g else []
        gens = int(gens.iloc[0]) if len(gens) else 1
        try:
            if stage == "teachers":
                if size is None:
                    continue
                work = model.epoch_work("scratch", spec.teacher_model(size))
            else:
                work = model.epoch_work(method, spec.student, size, gens)
        except Exception:  # a model this kdstudy cannot build (a plug-in not loaded): not counted
            continue
        trials.append((f"{stage}:{method}", method, *work, float(g["epoch_s"].mean())))
    trials = [t for t in trials if t[4] > 0 and t[2] > 0]
    if not trials:
        return None
    flops = np.array([t[2] for t in trials])
    batches = np.array([t[3] for t in trials])
    secs = np.array([t[4] for t in trials])
    keys = sorted({t[0] for t in trials})
    of_key = np.array([keys.index(t[0]) for t in trials])
    # seconds = factor[stage:method] x (batches x s_per_batch + FLOPs x s_per_flop), fitted by alternating
    # non-negative least squares on relative error: the factors take what the FLOPs model misses of a
    # method (RKD's angle, a loaded machine at the time), the shared seconds per FLOP and per batch come
    # from how a key's epochs grow with its models' FLOPs (teacher sizes, ladders)
    scale = np.array([flops.mean(), batches.mean()])  # well-conditioned columns
    f = np.ones(len(keys))
    for _ in range(50):
        target = secs / f[of_key]
        (a, b), _ = nnls(np.stack([flops / target, batches / target], axis=1) / scale, np.ones(len(secs)))
        fitted = flops * a / scale[0] + batches * b / scale[1]
        if not (fitted > 0).all():
            break
        new = np.array([secs[of_key == i].sum() / fitted[of_key == i].sum() for i in range(len(keys))])
        new /= np.exp(np.mean(np.log(new[of_key])))  # the scale lives in the seconds, not the factors
        done = np.allclose(new, f, rtol=1e-6)
        f = new
        if done:
            break
    target = secs / f[of_key]
    (a, b), _ = nnls(np.stack([flops / target, batches / target], axis=1) / scale, np.ones(len(secs)))
    s_per_flop, s_per_batch = a / scale[0], b / scale[1]
    fitted = flops * s_per_flop + batches * s_per_batch
    factor: dict[str, float] = {}
    for col in (0, 1):  # "<stage>:<method>", then "<method>": measured over fitted
        for key in sorted({t[col] for t in trials}):
            sel = np.array([t[col] == key for t in trials])
            if fitted[sel].sum() > 0:
                factor[key] = float(secs[sel].sum() / fitted[sel].sum())
    return float(s_per_flop), float(s_per_batch), factor


def _size_of(spec, size: float, name: str | None = None):
    """The spec's own teacher size (an int or a string size) that the results record as `size`
    (and `teacher_size_name`, as the ladder writes it)."""
    sizes = list(spec.teachers.get("sizes") or [])
    for z in sizes:
        if name is not None and str(z) == str(name):
            return z
    for z in sizes:
        try:
            if float(z) == size:
                return z
        except (TypeError, ValueError):
            continue
    return int(size) if float(size).is_integer() else size


# --------------------------------------------------------------------------- the report


def _fmt_s(s: float) -> str:
    if math.isnan(s):
        return "-"
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


# --------------------------------------------------------------------------- nodes: how trials pack


@dataclass(frozen=True)
class NodeShape:
    """A Ray node's CPUs and GPUs (`--node 8:1`, or this machine)."""

    cpus: float
    gpus: int = 0
    name: str = "a node"

    def __str__(self) -> str:
        gpus = f" and {self.gpus} GPU{'s' if self.gpus != 1 else ''}" if self.gpus else ""
        return f"{self.name} with {self.cpus:g} CPUs{gpus}"


def parse_node(text: str) -> NodeShape:
    """`CPUS[:GPUS]` (8:1 is eight CPUs and one GPU) -> NodeShape; ValueError names the problem."""
    cpus, _, gpus = str(text).partition(":")
    try:
        shape = NodeShape(float(cpus), int(gpus) if gpus else 0)
    except ValueError:
        raise ValueError(f"--node wants CPUS[:GPUS] such as 8:1; got {text!r}") from None
    if not shape.cpus > 0 or shape.gpus < 0 or not math.isfinite(shape.cpus):
        raise ValueError(f"--node wants a positive CPU count and a GPU count >= 0; got {text!r}")
    return shape


def this_machine() -> NodeShape:
    """This machine as a local Ray sees it (its cores; its CUDA devices, without touching a GPU)."""
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:
        gpus = 0
    return NodeShape(float(os.cpu_count() or 1), int(gpus), "this machine")


@dataclass(frozen=True)
class Packing:
    """Trials one node runs at once for a spec's per-trial resources, and what bounds it."""

    trials: int         # min(by_cpu, by_gpu)
    by_cpu: int         # what the node's CPUs allow
    by_gpu: int | None  # what its GPUs allow (None: the trials ask for no GPU)

    @property
    def idle_gpu_share(self) -> float:
        """Fraction of the node's GPU capacity (in trials) that its CPUs leave unused."""
        if not self.by_gpu:
            return 0.0
        return 1.0 - self.trials / self.by_gpu


def packing(resources: dict, node: NodeShape) -> Packing:
    """How Ray packs trials of `resources` ({cpu, gpu}) on `node`: a fractional GPU request is
    met within one GPU, so each GPU holds floor(1 / gpu) trials."""
    cpu = float(resources.get("cpu") or 1)
    gpu = float(resources.get("gpu") or 0)
    by_cpu = int(math.floor(node.cpus / cpu + 1e-9))
    if gpu <= 0:
        return Packing(by_cpu, by_cpu, None)
    by_gpu = int(node.gpus * math.floor(1.0 / gpu + 1e-9)) if gpu <= 1 else int(node.gpus // gpu)
    return Packing(min(by_cpu, by_gpu), by_cpu, by_gpu)


def idle_gpu_warning(resources: dict, node: NodeShape) -> str | None:
    """One line when the spec's per-trial CPUs leave some of `node`'s GPU share idle (or when
    its GPUs get no trial at all); None when the node is used as the spec intends."""
    gpu = float(resources.get("gpu") or 0)
    cpu = float(resources.get("cpu") or 1)
    if node.gpus <= 0:
        return None
    if gpu <= 0:
        return (f"{node} but resources.gpu is 0: every trial runs on the CPU and the GPUs idle "
                "(set resources.gpu, e.g. 0.25 packs four trials on a GPU)")
    p = packing(resources, node)
    if p.trials >= p.by_gpu:
        return None
    need = p.by_gpu * cpu / node.gpus
    return (f"{node} runs {p.trials} trials at once, not the {p.by_gpu} its GPUs hold "
            f"(resources.cpu {cpu:g} x {p.by_gpu} > {node.cpus:g} CPUs): {100 * p.idle_gpu_share:.0f}% of its "
            f"GPU share idles; give trials cpu: {node.cpus / p.by_gpu:g} or use nodes with {need:g} CPUs per GPU")


def default_slots(spec, node: NodeShape | None = None) -> int:
    """Trials at once on `node` (default: this machine), packed as Ray packs them."""
    node = node or this_machine()
    res = dict(spec.resources)
    if node.gpus <= 0:
        res["gpu"] = 0  # a local run without a GPU drops the request and runs on the CPUs (study.runner)
    return max(1, packing(res, node).trials)


def report(spec, slots: list[int] | None, model: DurationModel, out=print) -> dict:
    """Print the plan; return its numbers (for tests)."""
    exps = graph.plan(spec)
    works = model.works(exps)
    short = {e.name: f"{e.stage}-{e.label}" for e in exps}
    mc, cap = spec.max_concurrent, spec.resources.get("max_experiments")

    out(f"study {spec.name}: {len(exps)} experiments; max_concurrent {mc} trials per experiment"
        + (f", at most {cap} experiments at once" if cap else ""))
    w = max([len(v) for v in short.values()] + [10])
    out(f"{'experiment':<{w}}  {'deps':<28} {'trials':>6} {'epochs':>7} {'s/epoch':>8} {'asha':>6} {'alone':>9}")
    per_stage: dict[str, list] = {}
    for e in exps:
        wk = works[e.name]
        n, te = len(wk.trials), sum(t.epochs for t in wk.trials)
        ep = statistics.fmean(t.epoch_s for t in wk.trials) if wk.trials else 0.0
        alone = predict([_Alone(e.name)], math.inf, {e.name: wk}, "graph", mc).makespan
        deps = ", ".join(short[d] for d in e.deps) or "-"
        if len(deps) > 28:
            deps = deps[:25] + "..."
        asha = f"g{wk.grace_period}" if wk.rungs() else "-"
        out(f"{short[e.name]:<{w}}  {deps:<28} {n:>6} {te:>7} {ep:>8.1f} {asha:>6} {_fmt_s(alone):>9}")
        s = per_stage.setdefault(e.stage, [0, 0, 0, 0.0])
        s[0] += 1
        s[1] += n
        s[2] += te
        s[3] += sum(t.seconds for t in wk.trials)
    out("")
    out(f"{'stage':<10} {'experiments':>11} {'trials':>7} {'trial-epochs':>13} {'slot-time (no ASHA stops)':>26}")
    tot = [0, 0, 0, 0.0]
    for stage, (ne, nt, te, st) in per_stage.items():
        out(f"{stage:<10} {ne:>11} {nt:>7} {te:>13} {_fmt_s(st):>26}")
        tot = [tot[0] + ne, tot[1] + nt, tot[2] + te, tot[3] + st]
    out(f"{'total':<10} {tot[0]:>11} {tot[1]:>7} {tot[2]:>13} {_fmt_s(tot[3]):>26}")
    chain, length = critical_path(exps, works, mc)
    out("")
    out(f"critical path (unlimited slots, {mc} trials per experiment): {_fmt_s(length)}")
    out("  " + " -> ".join(short[n] for n in chain))
    out("")
    results = {"critical_path": (chain, length), "slots": {}}
    out(f"{'slots':>6} {'serial':>10} {'graph':>10} {'speed-up':>9} {'util serial':>12} {'util graph':>11}")
    for n in slots:
        ser = predict(exps, n, works, "serial", mc)
        gra = predict(exps, n, works, "graph", mc, cap)
        results["slots"][n] = (ser, gra)
        out(f"{n:>6} {_fmt_s(ser.makespan):>10} {_fmt_s(gra.makespan):>10} {ser.makespan / gra.makespan:>8.2f}x "
            f"{100 * ser.utilisation:>11.0f}% {100 * gra.utilisation:>10.0f}%")
    out("")
    asha = any(works[e.name].rungs() for e in exps)
    if asha and results["slots"]:
        g = results["slots"][slots[0]][1]
        out(f"with ASHA stops ({slots[0]} slots, graph): {g.stopped} of {g.trials} trials stopped early, "
            f"{g.trial_epochs} of {tot[2]} trial-epochs trained, {_fmt_s(g.busy)} of slot-time")
    notes = [f"a slot = one trial's resources (cpu {spec.resources['cpu']:g}"
             + (f", gpu {spec.resources['gpu']:g}" if spec.resources.get("gpu") else "") + ")",
             f"trial overhead {model.trial_overhead_s:.3g} s; experiment start {model.exp_start_s:.3g} s "
             f"(a search {model.search_start_s:.3g} s), end {model.exp_end_s:.3g} s"]
    if asha:
        notes.append("ASHA: trial quality drawn at random (ranks the same at every rung); "
                     f"median of {len(SEEDS)} draws")
    if model.estimated:
        thr = model.throughput()
        notes.append(f"epoch seconds ESTIMATED from FLOPs at an assumed {thr:.2g} FLOP/s per slot: a rough default; "
                     "calibrate with --epoch-seconds (e.g. student=20 teacher=60) from a short real run")
    for n in notes:
        out("note: " + n)
    return results


def main(spec, slots: list[int] | None, epoch_seconds: list[str] | None, trial_overhead: float | None,
         from_results: str | None = None, out=print, node: str | None = None) -> int:
    """`kdstudy plan`: returns an exit code."""
    import sys

    try:
        given = parse_epoch_seconds(epoch_seconds)
        shape = parse_node(node) if node else None
    except ValueError as exc:
        print(f"kdstudy: {exc}", file=sys.stderr)
        return 2
    if from_results:
        try:
            cal = calibrate_from_results(from_results)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            print(f"kdstudy: cannot calibrate from {from_results}: {exc}", file=sys.stderr)
            return 2
        model = DurationModel.from_calibration(spec, cal, given, trial_overhead)
    else:
        model = DurationModel(spec, given, trial_overhead)
    if slots and any(n < 1 for n in slots):
        print("kdstudy: --slots must be at least 1", file=sys.stderr)
        return 2
    if shape is not None:
        p = packing(spec.resources, shape)
        out(f"{shape}: {p.trials} trials at once (its CPUs allow {p.by_cpu}"
            + (f", its GPUs {p.by_gpu})" if p.by_gpu is not None else ")"))
    warning = idle_gpu_warning(spec.resources, shape or this_machine())
    if warning:
        out(f"warning: {warning}")
    report(spec, slots or [default_slots(spec, shape)], model, out=out)
    return 0
