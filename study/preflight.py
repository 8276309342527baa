"""Checks made before Ray starts: every problem once, then exit 2 (not 300 lines of tracebacks).

- the dataset can be read (CIFAR files present, or download asked; MNIST-1D generated once)
- the study storage is writable
- every imported teacher (`teachers.weights`) can be one: its file exists, is the file the study
  recorded (sha256), loads weights-only, holds a state dict, and that state dict fits the teacher's
  architecture at this dataset's input shape and class count (one line per size, naming the field);
  a size whose zoo entry is already complete needs its file no more
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

from trainables.config import size_key

from .spec import Spec
from .tracking import problems as tracking_problems
from .zoo import Zoo, changed_text, imported_content, imported_weights, key_of, teacher_jobs


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
    imported = imported_problems(spec, zoo) if spec.trains_teachers else []
    problems += imported
    if not imported:  # (the keys of imported teachers need their files' sha256)
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
    """Lines worth a user's attention before a run: imported teachers no method uses, weights files
    edited since the study imported them (it goes on with what it imported); on a local run
    (none for a cluster: its nodes are not this machine; `kdstudy plan --node CPUS:GPUS` checks a
    cluster node's shape) GPUs the trials leave idle."""
    out = []
    if imported_weights(spec) and not spec.trains_teachers:
        out.append("teachers.weights: no method of this spec distils from a frozen teacher (online teachers "
                   "train from scratch), so the imported weights are not used")
    out += changed_imports(spec)
    if not local:
        return out
    from .plan import idle_gpu_warning, this_machine

    warning = idle_gpu_warning(spec.resources, this_machine())
    return out + ([warning] if warning else [])


def changed_imports(spec: Spec) -> list[str]:
    """A line per imported teacher whose file is there but is no longer the file the study recorded
    (sha256): a study resumed after its weights file was edited keeps the teacher it imported (its zoo
    entry), and says so. (An entry not yet complete needs the file: `imported_problems` refuses it.)"""
    from trainables.imported import WeightsError, file_sha256

    out = []
    for size, entry in imported_weights(spec).items():
        recorded = entry.get("sha256")
        try:
            now = file_sha256(entry["path"]) if recorded else None
        except WeightsError:
            continue  # gone: the study needs it no more once imported (else the preflight names it)
        if now is not None and now != recorded:
            out.append(f"teachers.weights.{size}: {entry['path']} changed since this study imported it (sha256 "
                       f"{now[:12]}..., imported {recorded[:12]}...): the study goes on with the weights it "
                       f"imported; to study the edited file, run the spec as a new study (another `name`)")
    return out


def imported_problems(spec: Spec, zoo: Zoo | None) -> list[str]:
    """One line per imported teacher (`teachers.weights.<size>`) that cannot be one: its file missing,
    not the file the study recorded, not a weights-only file, holding no state dict, or a state dict that
    does not fit the architecture (shapes, names, a head for another number of classes). A size whose
    zoo entry is complete is checked as a zoo entry instead (the study no longer needs the file); with
    no `zoo` (`kdstudy validate`: no study yet), every file is checked."""
    from trainables.imported import WeightsError, load_teacher_weights

    weights = imported_weights(spec)
    if not weights:
        return []
    in_shape, classes = spec.shape
    out = []
    for size in spec.teacher_sizes:
        entry = weights.get(size_key(size))
        if entry is None:
            continue
        model = spec.teacher_model(size)
        recorded = entry.get("sha256")
        try:
            if zoo is not None and recorded and storage.exists(storage.join(
                    zoo.uri(key_of(imported_content(spec.dataset, model, entry, recorded))), "meta.json")):
                continue  # imported earlier: its entry is verified with the others
            _, sha, _ = load_teacher_weights(entry, model, in_shape, classes)
            if recorded and sha != recorded:
                raise WeightsError(changed_text(entry, recorded, sha))
        except WeightsError as exc:
            out.append(f"teachers.weights.{size}: {exc}")
    return out


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
