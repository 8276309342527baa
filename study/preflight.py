"""Checks made before Ray starts: every problem once, then exit 2 (not 300 lines of tracebacks).

- the dataset can be read (CIFAR files present, or download asked; MNIST-1D generated once)
- the study storage is writable
- every zoo entry the study would use is readable and matches its meta.json
- a spec that says `runtime.device: cuda` has CUDA to run on (a local run)
- models build (the spec already built every model on the meta device)
- every configured experiment tracker is installed and can work (study.tracking.problems)
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
                zoo.verify(meta, in_shape, classes)
        except Exception as exc:
            problems.append(f"zoo: {exc}")
    if local and spec.runtime.get("device") == "cuda":
        import torch

        if not torch.cuda.is_available():
            problems.append("runtime.device: cuda, but this machine has no CUDA device "
                            "(use device: auto to run on what is there)")
    problems += tracking_problems(getattr(spec, "tracking", None) or {}, root)
    return problems

