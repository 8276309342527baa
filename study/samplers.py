"""Optuna samplers of kdstudy's searches: which one, and seeded how.

`make_sampler(name, seed, trials, params)` builds the sampler a search
uses (`search.sampler` in the spec):

  tpe     Optuna's TPE, its first ``n_initial(trials)`` trials random (kdstudy's sampler
          until round 3)
  qmc     scrambled Sobol points over the whole space from the first trial on (a
          low-discrepancy design: few points, evenly spread, no model)
  gp      Gaussian-process Bayesian optimisation (Optuna's `GPSampler`) after a
          scrambled-Sobol initial design of ``n_initial(trials)`` trials
  random  independent uniform draws (the reference every search must beat)
  auto    `DEFAULT`: qmc. Measured on the quickstart's KD search (bench/samplers.py,
          bench/RESULTS.md; 8 search replicates at 3, 6 and 12 trials): no sampler's
          chosen configurations are better on average by more than the noise (every
          difference to tpe within +-1 point, every interval across 0), but qmc and gp
          land much closer to each other from search to search (SD of the chosen
          quality 1.5 / 0.9 / 0.9 points at 3 / 6 / 12 trials against tpe's 2.1 / 2.0 /
          1.9, random's 1.9 / 1.9 / 2.2), which is what a verdict across searches needs;
          qmc does it without a model (no torch in the experiment drivers, nothing
          fitted per suggestion). gp had the best mean at 12 trials (+1.0 [-0.3, +2.4]
          points over tpe): worth choosing for searches of 12 trials or more.

Each search gets its own sampler seed, `sampler_seed(search.seed, label)`,
from the study's `search.seed` and the experiment's label (method, teacher
size, replicate): searches of different teacher sizes no longer start from
the same configurations. The seed and the sampler are not part of an
experiment's identity (they decide which configurations are tried, not what a
trial is); a search records both in its Optuna journal when it starts, and a
resumed search keeps what it recorded (`recorded_sampler`), so resuming never
switches the sampler under a half-finished search.

This module needs Optuna only (no Ray; GPSampler brings torch): the benchmark
uses it as the searches do. Its samplers are module-level classes, so Tune can
pickle a searcher that holds one.
"""

from __future__ import annotations

import hashlib
import warnings

import optuna
from optuna.trial import TrialState

from .ranges import Range

SAMPLERS = ("tpe", "qmc", "gp", "random")
AUTO = "auto"
#: what `search.sampler: auto` means (measured: bench/samplers.py, bench/RESULTS.md)
DEFAULT = "qmc"
#: the Optuna study attribute a search's sampler is recorded under
RECORD_KEY = "kdstudy_sampler"
#: the trial attribute naming which stage of a staged sampler proposed the trial
STAGE_KEY = "kdstudy_design"


def resolve(name: str) -> str:
    """The concrete sampler of a spec's `search.sampler`."""
    return DEFAULT if name in (None, AUTO) else name


def sampler_seed(search_seed: int, label: str) -> int:
    """A search's sampler seed: a hash of the study's search seed and the experiment's label."""
    digest = hashlib.sha256(f"kdstudy-sampler:{int(search_seed)}:{label}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def n_initial(trials: int) -> int:
    """Trials of a search's initial design (random for tpe, Sobol for gp): a third, at least 2."""
    return max(2, int(trials) // 3)


def distributions(params: dict[str, Range]) -> dict:
    """The Optuna distributions `study.spaces.define_space` suggests for `params`."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for name, r in sorted(params.items()):
        if r.kind == "categorical":
            out[name] = CategoricalDistribution(list(r.choices))
        elif r.kind == "int":
            out[name] = IntDistribution(int(r.low), int(r.high), log=r.log)
        else:
            out[name] = FloatDistribution(float(r.low), float(r.high), log=r.log)
    return out


def _quiet():
    """Optuna's experimental-feature warnings (QMC, GP) say nothing a user must act on."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    return ctx


class SobolSampler(optuna.samplers.QMCSampler):
    """Scrambled Sobol points over a search space known in advance.

    Optuna's `QMCSampler` learns a define-by-run space from the first trial,
    which it therefore draws at random; here the space is given, so every
    trial, the first included, is a point of one scrambled Sobol sequence
    (with n = 2^m points, exactly one in each of n equal strata per axis).
    Parameters a trial suggests outside `space` are drawn at random.
    """

    def __init__(self, space: dict, seed: int):
        super().__init__(qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False)
        self._space = dict(space)

    def infer_relative_search_space(self, study, trial):
        return {k: d for k, d in self._space.items() if not d.single()}


class StagedSampler(optuna.samplers.BaseSampler):
    """An initial design (`initial`) for the first `n` trials, then a model (`model`).

    A trial is proposed by one of them, decided when it starts (`before_trial`,
    recorded as the trial attribute `STAGE_KEY`) from the trials finished so far.
    """

    def __init__(self, initial, model, n: int):
        self._initial, self._model, self._n = initial, model, int(n)
        self._stage: dict[int, str] = {}

    def _pick(self, trial):
        return self._initial if self._stage.get(trial._trial_id, "model") == "initial" else self._model

    def before_trial(self, study, trial):
        done = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED), use_cache=False)
        stage = "initial" if len(done) < self._n else "model"
        self._stage[trial._trial_id] = stage
        study._storage.set_trial_system_attr(trial._trial_id, STAGE_KEY, stage)
        self._pick(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._pick(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._pick(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._pick(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self._pick(trial).after_trial(study, trial, state, values)
        self._stage.pop(trial._trial_id, None)

    def reseed_rng(self):
        self._initial.reseed_rng()
        self._model.reseed_rng()


def make_sampler(name: str, seed: int, trials: int, params: dict[str, Range], initial: int | None = None):
    """The Optuna sampler `name` (see the module docstring) for a search of `trials` trials over `params`.

    `initial` overrides the size of the initial design (tpe, gp, and the
    benchmark's staged variants); by default `n_initial(trials)`.
    Names beyond `SAMPLERS` that the benchmark compares: ``qmc+tpe`` (TPE after a
    Sobol initial design) and ``gp-random`` (GPSampler as Optuna ships it, random start).
    """
    name = resolve(name)
    n = n_initial(trials) if initial is None else int(initial)
    space = distributions(params)
    ctx = _quiet()
    try:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "qmc":
            return SobolSampler(space, seed)
        if name == "gp":
            model = optuna.samplers.GPSampler(seed=seed, n_startup_trials=0, warn_independent_sampling=False)
            return StagedSampler(SobolSampler(space, seed), model, n)
        if name == "gp-random":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n)
        if name == "qmc+tpe":
            model = optuna.samplers.TPESampler(seed=seed, n_startup_trials=0)
            return StagedSampler(SobolSampler(space, seed), model, n)
    finally:
        ctx.__exit__(None, None, None)
    raise ValueError(f"unknown sampler {name!r}; one of {', '.join((AUTO,) + SAMPLERS)}")


def record(name: str, seed: int, initial: int) -> dict:
    """What a search records in its Optuna study (user attribute `RECORD_KEY`) when it starts."""
    return {"name": resolve(name), "seed": int(seed), "initial": int(initial)}


def recorded_sampler(study, fallback: dict, legacy_seed: int) -> dict:
    """The sampler a search must use: the one its journal recorded; for a journal that holds
    trials but no record (a search started before samplers were recorded) the sampler it
    started with (tpe, seeded with the study's search seed); else `fallback` (a new search)."""
    rec = study.user_attrs.get(RECORD_KEY)
    if isinstance(rec, dict) and rec.get("name"):
        return {"name": rec["name"], "seed": int(rec.get("seed", 0)), "initial": int(rec.get("initial", 2))}
    if study.get_trials(deepcopy=False):
        return {"name": "tpe", "seed": int(legacy_seed), "initial": fallback["initial"]}
    return dict(fallback)
