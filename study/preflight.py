"""Checks made before Ray starts: every problem once, then exit 2 (not 300 lines of tracebacks).

- the dataset can be read (CIFAR files present, or download asked; MNIST-1D generated once)
- the study storage is writable
- every zoo entry the study would use is readable, is the entry its key names, and matches its meta.json
- the results of every finished teacher are what was verified (a teacher is never trained again:
  see `study.runner.StudyRunner.check_results`)
- a spec that says `runtime.device: cuda` asks Ray for a GPU (`resources.gpu` > 0: a trial
  uses a GPU exactly when Ray gives it one) and, for a local run, has CUDA to run on
- models build (the spec already built every model on the meta device)
- every configured experiment tracker is installed and can work (study.tracking.problems)

`preflight_warnings` says what would waste a local machine without stopping the run:
GPUs that the spec's trials never get (`resources.gpu: 0`), or a GPU share that the
per-trial CPUs leave idle (`study.plan.idle_gpu_warning`).
"""

from __future__ import annotations

import uuid

from trainables import storage
from trainables.data import check_dataset

from .spec import Spec
from .tracking import problems as tracking_problems
from .zoo import Zoo, teacher_jobs


def preflight(spec: Spec, root: str, local: bool = True) -> list[str]:
    problems: list[str] = list(check_dataset(spec.dataset))
    probe = storage.join(root, f".write-probe-{uuid.uuid4().hex[:8]}")
    try:
        storage.write_bytes(probe, b"ok")
        fs, path = storage.resolve(probe)
        fs.delete_file(path)
    except Exception as exc:
        problems.append(f"storage: cannot write to {root}: {exc}")
    zoo = Zoo(storage.join(root, "zoo"))
    in_shape, classes = spec.shape
    for job in teacher_jobs(spec):
        try:
            meta = zoo.get(job["key"])
            if meta is not None:
                zoo.verify(meta, in_shape, classes, job=job)
        except Exception as exc:
            problems.append(f"zoo: {exc}")
    problems += _damaged_teachers(spec, root)
    if spec.runtime.get("device") == "cuda":
        if not spec.resources.get("gpu"):
            problems.append("runtime.device: cuda, but resources.gpu is 0: Ray gives a trial a GPU only when it "
                            "asks for one (set resources.gpu, e.g. 0.25, or device: auto)")
        elif local:
            import torch

            if not torch.cuda.is_available():
                problems.append("runtime.device: cuda, but this machine has no CUDA device "
                                "(use device: auto to run on what is there)")
    problems += tracking_problems(getattr(spec, "tracking", None) or {}, root)
    return problems


def preflight_warnings(spec: Spec, local: bool = True) -> list[str]:
    """Lines worth a user's attention before a local run (none for a cluster: its nodes are
    not this machine; `kdstudy plan --node CPUS:GPUS` checks a cluster node's shape)."""
    if not local:
        return []
    from .plan import idle_gpu_warning, this_machine

    warning = idle_gpu_warning(spec.resources, this_machine())
    return [warning] if warning else []


def _damaged_teachers(spec: Spec, root: str) -> list[str]:
    """A line per finished teacher experiment whose results file is no longer what was verified."""
    from .folder import StudyFolder
    from .graph import plan
    from .results import check_recorded, damaged_teacher_text, teacher_lost

    folder, results = StudyFolder(root), storage.join(root, "results")
    out = []
    for e in plan(spec):
        marker = folder.marker(e.name) if e.stage == "teachers" else None
        for t in (marker or {}).get("trials", []):
            why = None if t.get("lost") else check_recorded(results, e.stage, t)
            if why is not None and teacher_lost(t, why):
                out.append(damaged_teacher_text(e.stage, t["trial_key"], why))
                break
    return out
