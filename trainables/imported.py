"""Teachers you already have: a weights file read into a teacher of the ladder, and its evaluation.

A spec's `teachers.weights: {<size>: path | {path, key, format, sha256}}` names
a file of trained weights for a size of the ladder; that size is then imported,
not trained. What is accepted (`state_dict_of`):

* a file `torch.save` wrote, always read with ``torch.load(..., weights_only=True)``
  (tensors, numbers, strings, lists and dicts only: a file holding other Python
  objects is refused, never run);
* the state dict at its top level (``torch.save(model.state_dict(), path)``),
  or nested under `key` (a dotted path such as ``ema.model`` for nested mappings),
  or, without `key`, under one of ``state_dict``, ``model_state_dict``, ``model``,
  ``net`` (the usual training checkpoints, a kdstudy zoo entry's ``model.pt``
  too); several of these holding state dicts is ambiguous and needs `key`;
* key prefixes that every key shares from `DataParallel`/`DistributedDataParallel`
  (``module.``) and ``torch.compile`` (``_orig_mod.``) are removed;
* `format: torchvision` is a weights file as torchvision publishes it (the
  ``.pth`` files `torchvision.models` downloads into the torch hub cache): a
  top-level state dict, for a teacher of the `torchvision` family; DenseNet's
  published files name their layers' norms and convolutions in an older way
  (``norm.1``), renamed as torchvision renames them. `format: auto` (the
  default) reads both kinds; `format: state_dict` never renames.

The weights must fit the teacher's architecture exactly, at this dataset's input
shape and class count (`fit`): every parameter and buffer, each of its shape (a
BatchNorm's ``num_batches_tracked`` of files older than PyTorch 0.4.1 is filled
as PyTorch fills it). A head for another number of classes is refused with its
own message: an imported teacher is frozen, and a replaced head would be
untrained (chance-level logits to distil from); fine-tune the teacher on this
dataset and import the result.

`run_import(config, hooks)` is the evaluation-only trial of an imported teacher
(the `teachers` stage, method ``import``): the weights the driver staged in the
zoo entry (``model.pt``, checked by its sha256) are evaluated on this study's
validation and test splits exactly as the loop evaluates a model, the rows are
reported (epoch 0: nothing was trained; role ``teacher``, ``teacher_origin:
imported``), and then meta.json is written, which completes the entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
from collections.abc import Mapping

from . import storage

#: where a training checkpoint usually keeps its model's state dict (looked up without `key`)
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net")
#: prefixes every key of a wrapped model's state dict shares: (DistributedData)Parallel, torch.compile
PREFIXES = ("module.", "_orig_mod.")
WEIGHT_FORMATS = ("auto", "state_dict", "torchvision")
#: DenseNet's published weights name `norm1` `norm.1` (and so on); torchvision renames them on loading
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                               r"([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


class WeightsError(ValueError):
    """A weights file that cannot be this teacher (the message is one line)."""


# --------------------------------------------------------------------------- the file


_SHA_CACHE: dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    """The sha256 of a weights file (a local path or a URI), computed once per file version and
    process (a local file's size and modification time say when it changed). Raises WeightsError."""
    local = storage.local_path(path)
    try:
        if local is not None:
            st = os.stat(local)
            if not os.path.isfile(local):
                raise WeightsError(f"{path} is not a file")
            stamp = (local, st.st_size, st.st_mtime_ns)
            if stamp not in _SHA_CACHE:
                h = hashlib.sha256()
                with open(local, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                _SHA_CACHE[stamp] = h.hexdigest()
            return _SHA_CACHE[stamp]
        return hashlib.sha256(storage.read_bytes(path)).hexdigest()
    except FileNotFoundError:
        raise WeightsError(f"no such file: {path}") from None
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_weights_file(path: str) -> tuple[object, str]:
    """(what the file holds, its sha256), loaded weights-only on the CPU. Raises WeightsError."""
    import torch

    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise WeightsError(f"no such file: {path}") from None
    except (IsADirectoryError, OSError) as exc:
        raise WeightsError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    sha = hashlib.sha256(data).hexdigest()
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types (UnpicklingError, RuntimeError, ...)
        # torch's own files are zip archives (older ones a pickle stream, as pickle.dump's are); anything
        # else is no torch file at all, whatever torch's message (it speaks of weights_only all the same)
        if data[:4] != b"PK\x03\x04" and data[:1] != b"\x80":
            raise WeightsError(f"{path} is not a file torch.save wrote (neither a zip archive nor a pickle)") from None
        reason = _unpickler_reason(exc)
        if reason is not None:
            raise WeightsError(
                f"{path} holds what a weights-only load refuses (Python objects: kdstudy never runs code from a "
                f"file; {_clip(reason)}): save the weights alone, e.g. torch.save(model.state_dict(), path)") from None
        raise WeightsError(f"{path} is damaged or truncated: torch.load fails ({_clip(_first_line(exc), 120)})") from None
    return obj, sha


def state_dict_of(obj, key: str | None = None, fmt: str = "auto", family: str | None = None,
                  where: str = "the file") -> tuple[dict, str]:
    """The state dict a loaded weights file holds (see the module docstring) and how it was found, in
    words (``"under 'state_dict', prefix 'module.' removed"``). Raises WeightsError."""
    if fmt not in WEIGHT_FORMATS:
        raise WeightsError(f"unknown weights format {fmt!r}; one of {', '.join(WEIGHT_FORMATS)}")
    if fmt == "torchvision" and family != "torchvision":
        raise WeightsError(f"format torchvision is for teachers of the torchvision family, not {family}")
    how: list[str] = []
    if key is not None:
        state = _under(obj, key, where)
        how.append(f"under {key!r}")
    elif _is_state_dict(obj):
        state = obj
    elif fmt == "torchvision":
        raise WeightsError(f"{where} is not a torchvision weights file (a state dict at its top level): "
                           f"{_describe(obj)}; use format: state_dict with `key`")
    else:
        found = [k for k in STATE_KEYS if isinstance(obj, Mapping) and _is_state_dict(obj.get(k))]
        if len(found) > 1:
            raise WeightsError(f"{where} holds several state dicts ({', '.join(found)}): name one with `key`")
        if not found:
            raise WeightsError(f"{where} holds no state dict: {_describe(obj)}; name the entry that holds "
                               f"the model's weights with `key`")
        state = obj[found[0]]
        how.append(f"under {found[0]!r}")
    if not _is_state_dict(state):
        raise WeightsError(f"{where}: the entry {key!r} is not a state dict (names to tensors): {_describe(state)}")
    state = dict(state)
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                how.append(f"prefix {p!r} removed")
                changed = True
    if family == "torchvision" and fmt != "state_dict":
        renamed = {k: (f"{m[1]}{m[2]}" if (m := _DENSENET_OLD_KEY.match(k)) else k) for k in state}
        if any(a != b for a, b in renamed.items()):
            state = {renamed[k]: v for k, v in state.items()}
            how.append("DenseNet's published layer names renamed")
    return state, ", ".join(how) if how else "at the top level"


def fit(state: dict, cfg: dict, in_shape, num_classes: int, where: str = "the weights") -> dict:
    """`state` as the complete state dict of the model `cfg` for this input shape and class count
    (the model's key order and dtypes, every buffer present), or WeightsError naming the first
    problem: a head for another number of classes, a shape, a missing or an unexpected name."""
    from .models import arch_name, build_meta

    try:
        model = build_meta(cfg, tuple(in_shape), int(num_classes))
    except Exception as exc:
        raise WeightsError(f"cannot build the teacher {cfg}: {_first_line(exc)}") from None
    expected = model.state_dict()
    arch = arch_name(cfg)
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    for k, got, want in wrong:
        if got and want and want[0] == num_classes and got[0] != num_classes and got[1:] == want[1:]:
            raise WeightsError(
                f"{where} classify {got[0]} classes ({k}: {list(got)}), the dataset has {num_classes}: an imported "
                f"teacher is used as it is (frozen), and a new head would be untrained; fine-tune the teacher on "
                f"this dataset, then import that")
    if wrong:
        k, got, want = wrong[0]
        more = f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""
        raise WeightsError(f"{where} do not fit {arch} at input {tuple(in_shape)}: {k} is {list(got)} in the file, "
                           f"{list(want)} in the model{more}")
    loaded = dict(state)
    try:
        result = model.load_state_dict(loaded, strict=False, assign=True)
    except RuntimeError as exc:
        raise WeightsError(f"{where} do not fit {arch}: {_clip(_first_line(exc))}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} of its tensors are missing (e.g. {result.missing_keys[0]})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} names are not in the model "
                        f"(e.g. {result.unexpected_keys[0]})")
    if problems:
        raise WeightsError(f"{where} are not weights of {arch}: " + "; ".join(problems))
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach()
        if v.is_meta:
            raise WeightsError(f"{where} are not weights of {arch}: {k} is missing")
        want = expected[k].dtype
        out[k] = v.to(want) if v.is_floating_point() and want.is_floating_point else v
    return out


def load_teacher_weights(entry: dict, cfg: dict, in_shape, num_classes: int) -> tuple[dict, str, str]:
    """Read, extract and fit an imported teacher's weights (`entry`: the spec's `{path, key, format}`):
    (state dict of the model, sha256 of the file, how the state dict was found). Raises WeightsError."""
    path = entry["path"]
    obj, sha = read_weights_file(path)
    state, how = state_dict_of(obj, entry.get("key"), entry.get("format", "auto"), cfg.get("family"), where=path)
    return fit(state, cfg, in_shape, num_classes, where=f"the weights in {path}"), sha, how


# --------------------------------------------------------------------------- the evaluation trial


def run_import(config: dict, hooks):
    """Evaluate an imported teacher's staged weights on the study's validation and test splits,
    report its rows, then complete its zoo entry (meta.json). Trains nothing."""
    import time

    import torch

    from . import data as data_mod
    from .device import choose_device, plan_device
    from .loop import _rows, evaluate, model_facts, size_value
    from .methods import Method
    from .step import build_context

    t0 = time.perf_counter()
    runtime = {**config.get("runtime", {}), "compile": False}  # one pass over two splits: nothing to gain
    device = choose_device(runtime, runtime.get("gpu_ids"))
    splits = data_mod.load_dataset(config["dataset"])
    in_shape, num_classes = splits.input_shape, splits.num_classes
    plan = plan_device(device, runtime, splits.kind)
    plan.apply()
    val_xy = data_mod.to_device(splits.val, plan.device)
    test_xy = data_mod.to_device(splits.test, plan.device)

    export = config["export"]
    uri = storage.join(export["uri"], "model.pt")
    data = storage.read_bytes(uri)
    sha = hashlib.sha256(data).hexdigest()
    staged = export.get("staged_sha256")
    if staged is not None and sha != staged:
        raise storage.CorruptCheckpointError(f"imported teacher weights {uri} are not the ones staged "
                                             f"(sha256 {sha[:12]}..., staged {staged[:12]}...)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["model"]
    except Exception as exc:
        raise storage.CorruptCheckpointError(f"imported teacher weights {uri} cannot be read: {exc}") from None

    cfg = {k: v for k, v in config["student"].items() if k != "origin"}
    ctx = build_context(cfg, None, num_classes, in_shape, plan, lambda c: state)

    class Imported(Method):
        """The imported teacher, frozen: evaluated, never trained."""

        def __init__(self):
            super().__init__(ctx, {})
            self.student = ctx.load_model(cfg)

        def frozen_modules(self):
            return [self.student]

    method = Imported()
    has_val = len(val_xy[1]) > 0
    t_eval = time.perf_counter()
    val = evaluate(method, *val_xy, splits, plan, runtime) if has_val else {}
    test = evaluate(method, *test_xy, splits, plan, runtime)
    eval_time = time.perf_counter() - t_eval
    facts = {"student": {**model_facts(cfg, in_shape, num_classes), "origin": "imported"}, "teacher": {},
             "assistant": {}, "size": {"student": size_value(cfg, num_classes)}}
    key = ("student", None)
    val_acc = val[key][1] if has_val else None
    test_acc = test[key][1]
    rows = _rows(config, hooks.trial_id, facts, method, 0, 0, val, test, {}, {}, 0.0, 0.0, plan.device,
                 "best_val" if has_val else "last_epoch",
                 {"setup_time_s": t_eval - t0, "eval_time_s": eval_time})
    hparams = {"val_fraction": float(config["dataset"].get("val_fraction", 0.1)), "selection": "imported"}
    for r in rows:
        r["hparams"] = hparams
    shown = val_acc if has_val else test_acc
    metrics = {"val_acc": shown, "test_acc": test_acc, "best_val_acc": shown, "best_test_acc": test_acc,
               "generation": 0, "epoch": 0, "progress": 1, "progress_total": 1, "status": "ok",
               "selected_on": "val" if has_val else "test"}
    hooks.report(metrics, rows, None, final=True)
    s = facts["student"]
    meta = {
        "family": cfg.get("family"), "size": cfg.get("size"), "arch": s.get("arch"), "params": s.get("params"),
        "flops": s.get("flops"), "val_acc": val_acc, "acc": test_acc,
        "val_loss": val[key][0] if has_val else None, "test_loss": test[key][0],
        "best_epoch": None, "epochs": 0, "seed": None,
        "options": {k: v for k, v in cfg.items() if k not in ("family", "size")},
        "file": "model.pt", "sha256": sha, "epoch_checkpoints": {}, "origin": "imported",
        **(export.get("meta") or {}),  # the source file's record and the key's content
    }
    storage.write_bytes(storage.join(export["uri"], "meta.json"), json.dumps(meta, indent=1).encode())
    return hooks


# --------------------------------------------------------------------------- helpers


def _is_state_dict(obj) -> bool:
    import torch

    return (isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def _under(obj, key: str, where: str):
    """`obj[key]`, or the dotted path `key` through nested mappings."""
    if isinstance(obj, Mapping) and key in obj:
        return obj[key]
    cur, seen = obj, []
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            at = f" under {'.'.join(seen)!r}" if seen else ""
            raise WeightsError(f"{where} has no entry {part!r}{at} (key {key!r}): {_describe(cur)}")
        cur = cur[part]
        seen.append(part)
    return cur


def _describe(obj) -> str:
    """What a loaded object is, in a few words (its first keys for a mapping)."""
    import torch

    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:6]]
        more = f", ... ({len(obj)} in all)" if len(obj) > 6 else ""
        if not obj:
            return "an empty mapping"
        bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
        if bad is not None and sum(isinstance(v, torch.Tensor) for v in obj.values()) > len(obj) / 2:
            return f"a mapping of mostly tensors, but {str(bad)!r} is a {type(obj[bad]).__name__}"
        return f"a mapping with keys {', '.join(keys)}{more}"
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {list(obj.shape)}"
    return f"a {type(obj).__name__}"


def _unpickler_reason(exc: BaseException) -> str | None:
    """What torch's weights-only unpickler refused (``Unsupported global: GLOBAL my.Net ...``), without
    its general advice; None when the error is not the unpickler's."""
    text = str(exc)
    if "WeightsUnpickler" not in text and "Weights only load failed" not in text:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hit = next((ln for ln in lines if ln.startswith("Unsupported") or "Unsupported global" in ln), None)
    if hit is None:
        after = [ln.split("WeightsUnpickler error:", 1)[1].strip() for ln in lines if "WeightsUnpickler error:" in ln]
        hit = next((a for a in after if a), "an object it does not allow")
    hit = hit.split("WeightsUnpickler error:", 1)[-1].strip()
    return hit.split(" was not an allowed global")[0]


def _first_line(exc: BaseException) -> str:
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return text[0] if text else type(exc).__name__


def _clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def source_record(entry: dict, sha256: str, how: str) -> dict:
    """What a zoo entry records of the file it was imported from (provenance: its name, not its path)."""
    rec = {"file": posixpath.basename(entry["path"].rstrip("/")), "sha256": sha256,
           "format": entry.get("format", "auto"), "found": how}
    if entry.get("key") is not None:
        rec["key"] = entry["key"]
    return rec
