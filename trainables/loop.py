"""The shared training loop: one trial of any method, with or without Ray.

`run_trial(config, hooks)` builds the data, the method (and through it the
models), then trains generation by generation, epoch by epoch. Each epoch it
evaluates every model the method reports on the validation and test splits,
builds the results rows, and hands rows, scalar metrics and a checkpoint
state to `hooks.report`. Ray Tune's trainable (`trainables.trainable`) is one
set of hooks; `LocalHooks` runs the same loop in a plain process (tests,
benchmarks, debugging).

Config keys (a resolved dict, see `trainables.config.resolve`):
  study, stage, method, seed, role ("student", or "teacher" when training a
  teacher), dataset (see `trainables.data.load_dataset`), student / teacher /
  assistant (model configs: family, size, options; frozen ones carry
  `checkpoint`, and `arch`, `params`, `flops`, `acc`, `size` from the zoo),
  hp (the method's hyperparameters),
  train: epochs, batch_size, optimizer (sgd | adamw), lr, weight_decay,
         momentum, nesterov, schedule (onecycle | cosine | step | constant),
         milestones (fractions of training for `step`), gamma, grad_clip,
         augment (image datasets: random crop + flip of training batches; default true)
  runtime: device (auto | cpu | cuda), precision (auto | fp32 | tf32 | bf16),
         channels_last, compile, gpu_fraction, gpu_ids (the GPUs Ray gave the trial; absent
         outside Ray), eval_batch_size; see `trainables.device` for what each means
  export: {"uri": where to write the trained model's weights and meta,
           "epochs": epochs whose weights are also kept (ESKD),
           "meta": fields meta.json records as given (the zoo key's content)} or null
  code_version: string recorded in every row.

Selection is honest: the "best" checkpoint of a trial is the epoch of best
validation accuracy; the test split is evaluated and recorded, never used to
choose.

Without a validation split (dataset `val_fraction: 0`, the protocol of the
published CIFAR numbers that train on all 50k images) nothing can be chosen
honestly: the trial's result is its *last* epoch, rows carry null val_loss /
val_acc and `selection: "last_epoch"` in their hparams (every row records
`val_fraction` and `selection`), and the scalar metrics `val_acc` /
`best_val_acc` that a searcher ranks by are the last epoch's *test* accuracy
(`selected_on: "test"` in the metrics): a search then selects on the test
set, which is what that protocol does; the spec asks for it knowingly.

Methods may ask the loop for two generic services (see `trainables.methods.base`):
`start_epoch(epoch)` before each epoch, and `keep_best_weights(generation)`,
a model whose best-validation weights the loop keeps during the generation and
restores into it when the generation ends (TAKD's assistant).
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

import torch
import torch.nn.functional as F

from . import data as data_mod
from . import models as models_mod
from . import storage
from .device import CompileLimitHit, DevicePlan, choose_device, is_compile_limit_error, plan_device
from .methods import Method, get_method
from .step import OPTIMIZERS, SCHEDULES, TrainStep, build_context, build_optimizer, build_schedule  # noqa: F401


class Hooks(Protocol):
    trial_id: str

    def load_checkpoint(self) -> dict | None: ...

    def report(self, metrics: dict, rows: list[dict], state: dict | None, final: bool = False) -> None:
        """Hand over an epoch's results; `state` is a checkpoint the hooks may keep (they decide
        how often to write it; `final` marks the end of a generation or of the trial)."""


@dataclass
class LocalHooks:
    """Run a trial in this process: keep rows and the latest checkpoint in memory."""

    trial_id: str = "local"
    rows: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    state: dict | None = None

    def load_checkpoint(self):
        return self.state

    def report(self, metrics, rows, state, final=False):
        self.metrics.append(metrics)
        self.rows.extend(rows)
        if state is not None:
            self.state = state


# --------------------------------------------------------------------------- setup


#: (model config, input shape, classes) -> arch, params, flops: counted once per architecture
#: and process (an actor reused for many trials counts each architecture once)
_FACTS_CACHE: dict[str, dict] = {}
#: keys the study adds to a model config that are not part of the architecture
_BOOKKEEPING = ("checkpoint", "acc", "epoch_checkpoints", "sha256", "arch", "params", "flops", "origin")
#: the teachers stage's method of an imported teacher (`trainables.imported.run_import`): evaluated only
IMPORT_METHOD = "import"


#: models up to this many parameters are counted on the CPU (a real forward of a few MFLOPs costs less
#: than the seconds a first meta forward takes to import torch._dynamo); larger ones on the meta device
_CPU_COUNT_MAX_PARAMS = 20_000_000


def model_facts(cfg: dict | None, in_shape, num_classes) -> dict:
    """arch, params and flops of a model config (counted once, then cached; a large model is
    counted on the meta device: no memory, no arithmetic). Draws no random numbers."""
    if not cfg:
        return {}
    if "arch" in cfg and "params" in cfg and "flops" in cfg:
        return cfg
    arch_cfg = {k: v for k, v in cfg.items() if k not in _BOOKKEEPING}
    key = json.dumps([arch_cfg, list(in_shape), num_classes], sort_keys=True, default=str)
    if key not in _FACTS_CACHE:
        model = models_mod.build_meta(cfg, in_shape, num_classes)
        params = models_mod.count_params(model)
        flops = None
        if params > _CPU_COUNT_MAX_PARAMS:
            try:
                flops = models_mod.count_flops(model, in_shape)
            except (NotImplementedError, RuntimeError):  # an operation without a meta kernel
                pass
        if flops is None:  # on the CPU
            with torch.random.fork_rng(devices=[]):
                model = models_mod.build_model(cfg, in_shape, num_classes)
            flops = models_mod.count_flops(model, in_shape)
        _FACTS_CACHE[key] = {"arch": models_mod.arch_name(cfg), "params": params, "flops": flops}
    return {**cfg, **_FACTS_CACHE[key]}


def training_cost(method: Method) -> dict:
    """What a trial trains beyond its deployed models, for every row: the parameters and forward
    FLOPs per sample of the method's connectors (`Method.connector_modules`; 0 for a method
    without). The deployed student's own count stays in `student_params` / `student_flops`."""
    params = sum(p.numel() for m in method.connector_modules() for p in m.parameters())
    return {"connector_params": int(params), "connector_flops": float(method.connector_flops())}


def size_value(cfg: dict | None, num_classes) -> float | None:
    """A model's size as a number for the results' ``teacher_size``: a numeric size as it is
    (the built-in ladders' values are unchanged), a named one (a torchvision model) by its
    family's `size_order` (torchvision: its parameter count), so ladders sort by size."""
    if not cfg or cfg.get("size") is None:
        return None
    size = cfg["size"]
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        return float(size)
    return models_mod.size_order({k: v for k, v in cfg.items() if k not in _BOOKKEEPING}, num_classes)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(method: Method, x, y, splits, plan: DevicePlan, runtime) -> dict:
    """{(role, exit): (loss, acc)} of every reported model on one split ({} for an empty split)."""
    if len(y) == 0:
        return {}
    method.eval()
    bs = int(runtime.get("eval_batch_size", 1024))
    sums: dict = {}
    n = 0
    for xb, yb in data_mod.batches(x, y, bs, shuffle=False, generator=None, augment=False,
                                   mean=splits.mean, std=splits.std, channels_last=plan.channels_last):
        with plan.autocast():
            outs = method.eval_logits(xb)
        for key, logits in outs.items():
            logits = logits.float()
            loss = F.cross_entropy(logits, yb, reduction="sum")
            correct = (logits.argmax(1) == yb).sum()
            if key in sums:
                sums[key][0] += loss
                sums[key][1] += correct
            else:
                sums[key] = [loss, correct]
        n += yb.numel()
    method.train()
    return {k: (float(v[0]) / n, float(v[1]) / n) for k, v in sums.items()}


# --------------------------------------------------------------------------- the loop


def run_trial(config: dict, hooks: Hooks | None = None) -> Hooks:
    """Train one trial to the end (or until it diverges); returns the hooks.

    A diverged trial is an outcome, not an error: its last report carries
    status "diverged" and the function returns normally.

    The device comes from `runtime.device` and, inside Ray, the GPUs Ray gave
    the trial (`runtime.gpu_ids`, set by the trainable); what runs there from
    the device plan (`trainables.device.plan_device`).
    """
    hooks = hooks or LocalHooks()
    if config.get("method") == IMPORT_METHOD and config.get("role") == "teacher":
        from .imported import run_import  # an imported teacher: evaluated, never trained

        return run_import(config, hooks)
    try:
        return _run_trial(config, hooks)
    except Exception as exc:
        if is_compile_limit_error(exc):
            raise CompileLimitHit(
                "runtime.compile: torch reached its recompile limit for a model of this trial and would have "
                "run it uncompiled from here on; set runtime.compile: false (or report the method and models)"
            ) from exc
        raise


def _run_trial(config: dict, hooks: Hooks) -> Hooks:
    t_start = time.perf_counter()
    runtime = config.get("runtime", {})
    train = config["train"]
    device = choose_device(runtime, runtime.get("gpu_ids"))
    seed = int(config.get("seed", 0))

    splits = data_mod.load_dataset(config["dataset"])
    in_shape, num_classes = splits.input_shape, splits.num_classes
    plan = plan_device(device, runtime, splits.kind)
    device = plan.device
    plan.apply()  # before the first allocation on the device: the memory cap holds from the start
    train_xy = data_mod.to_device(splits.train, device)
    val_xy = data_mod.to_device(splits.val, device)
    test_xy = data_mod.to_device(splits.test, device)
    channels_last = plan.channels_last

    def zoo_weights(cfg: dict) -> dict:
        if not cfg.get("checkpoint"):
            raise ValueError(f"model {cfg.get('arch', cfg)} has no checkpoint to load")
        return storage.load_state(cfg["checkpoint"])["model"]

    student_cfg = config["student"]
    teacher_cfg = config.get("teacher")
    facts = {
        "student": model_facts(student_cfg, in_shape, num_classes),
        "teacher": model_facts(teacher_cfg, in_shape, num_classes),
        "assistant": model_facts(config.get("assistant"), in_shape, num_classes),
        "size": {"student": size_value(student_cfg, num_classes), "teacher": size_value(teacher_cfg, num_classes)},
    }
    ctx = build_context(student_cfg, teacher_cfg, num_classes, in_shape, plan, zoo_weights,
                        assistant=config.get("assistant"), num_train_samples=len(splits.train[1]),
                        train_labels=splits.train[1])

    torch.manual_seed(seed)
    method = get_method(config["method"])(ctx, config.get("hp", {}))
    facts["cost"] = training_cost(method)
    state = hooks.load_checkpoint()
    if state is not None and state.get("diverged"):  # restored after it diverged: report that again
        hooks.report({"status": "diverged", "epoch": state["epoch"], "generation": state["generation"],
                      "progress": state.get("progress", 0), "best_val_acc": state.get("best_val_acc", 0.0),
                      "best_test_acc": state.get("best_test_acc", 0.0)}, [], None, final=True)
        return hooks

    if state is not None and state.get("metrics") and state["generation"] == method.generations - 1 \
            and state["epoch"] >= int(train["epochs"]):
        # the trial had finished (its driver stopped before recording that): report its end again
        # its last epoch's rows may not have reached the results before the interruption: again
        hooks.report(state["metrics"], _rows_from_json(state.get("last_rows") or "[]"), None, final=True)
        _export_final(config, state["best"], facts)
        return hooks
    if state is not None and state.get("metrics") and state.get("last_rows"):
        # the checkpoint's epoch again: its rows may not have reached the results before the
        # interruption (the sink writes them after the trial moved on); rows are keyed, so a
        # second copy replaces the first
        hooks.report(state["metrics"], _rows_from_json(state["last_rows"]), None)
    gen0, epoch0 = (state["generation"], state["epoch"]) if state else (0, 0)
    total_time = state["total_time_s"] if state else 0.0
    best = state["best"] if state else {}
    last_rows = json.loads(state["last_rows"]) if state and state.get("last_rows") else []
    # the batch generator lives on the trial's device: drawn on the CPU, every step's crop/flip
    # offsets would need a blocking host->device copy (a stream synchronisation per step on CUDA)
    gen_gen = torch.Generator(device=device)
    epochs = int(train["epochs"])
    bs = int(train.get("batch_size", 128))
    steps_per_epoch = max(1, math.ceil(len(train_xy[1]) / bs))
    grad_clip = train.get("grad_clip")
    export_epochs = set((config.get("export") or {}).get("epochs", ()))
    setup_time = None  # seconds from the trial's start to its first training step

    has_val = len(val_xy[1]) > 0
    selection = "best_val" if has_val else "last_epoch"
    augment = splits.augmentation if train.get("augment", True) else None  # the dataset's (None: signals)
    for generation in range(gen0, method.generations):
        torch.manual_seed(seed * 1000 + generation)
        method.start_generation(generation)
        keep = method.keep_best_weights(generation) if has_val else None
        kept = state.get("kept") if state is not None and generation == gen0 else None
        method.to(device)
        params = list(method.trainable_parameters())
        opt = build_optimizer(params, train, plan)
        sched = build_schedule(opt, train, steps_per_epoch)
        step_fn = TrainStep(method, params, opt, sched, plan, grad_clip)
        start_epoch = 0
        if state is not None and generation == gen0:
            method.load_state_dict(state["method"])
            if epoch0 < epochs:
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["schedule"])
            if state["rng"].numel() == gen_gen.get_state().numel():
                gen_gen.set_state(state["rng"])
            else:  # checkpoint from another device type (CPU <-> CUDA): reseed deterministically
                gen_gen.manual_seed(seed * 1000 + generation + 7919 * epoch0)
            start_epoch = epoch0
        else:
            gen_gen.manual_seed(seed * 1000 + generation)
        method.train()
        gen_best: dict = {}  # best validation accuracy of each reported model in this generation
        if state is not None and generation == gen0:
            gen_best = dict(_keyed(state.get("gen_best")))

        for epoch in range(start_epoch + 1, epochs + 1):
            method.start_epoch(epoch)
            t0 = time.perf_counter()
            step_fn.reset()
            if setup_time is None:  # from the trial's start (its process's, for a fresh Ray actor)
                started = config.get("started_at")
                setup_time = time.time() - started if started else t0 - t_start
            for batch in data_mod.batches(*train_xy, bs, shuffle=True, generator=gen_gen, augment=augment,
                                          mean=splits.mean, std=splits.std, drop_last=False,
                                          channels_last=channels_last, with_index=method.needs_sample_index):
                step_fn(*batch)  # (x, y), or (x, y, index in the training split) for a method that asks
            train_loss, train_acc, terms = step_fn.read()
            epoch_time = time.perf_counter() - t0
            total_time += epoch_time
            progress = generation * epochs + epoch  # epochs trained over all generations (ASHA's clock)
            if not math.isfinite(train_loss):
                rows = _diverged_rows(last_rows, epoch, epoch_time, total_time)
                best_val, best_test = best.get("val_acc", 0.0), best.get("test_acc", 0.0)
                hooks.report({"status": "diverged", "epoch": epoch, "generation": generation, "progress": progress,
                              "progress_total": method.generations * epochs,
                              "best_val_acc": best_val, "best_test_acc": best_test},
                             rows, {"diverged": True, "generation": generation, "epoch": epoch, "progress": progress,
                                    "best_val_acc": best_val, "best_test_acc": best_test}, final=True)
                return hooks
            t_eval = time.perf_counter()
            val = evaluate(method, *val_xy, splits, plan, runtime) if has_val else {}
            last_epoch = epoch == epochs
            exported = epoch in export_epochs
            if has_val:
                main_key = _main_key(val)
                # the test split is only read where it can be reported: an epoch where some reported
                # model (role, exit) reaches its best validation accuracy of this generation (the
                # epochs analysis selects), the end of a generation, an exported teacher epoch
                improves = [k for k, (_, acc) in val.items() if acc > gen_best.get(k, -1.0)]
                gen_best.update({k: val[k][1] for k in improves})
                need_test = bool(improves) or last_epoch or exported
            else:
                need_test = True  # no validation split: every epoch could be the last one reported
            test = evaluate(method, *test_xy, splits, plan, runtime) if need_test else None
            if not has_val:
                main_key = _main_key(test)
            test_main = test[main_key][1] if test else None
            # without a validation split the "validation" accuracy a searcher sees is the test accuracy
            val_acc = val[main_key][1] if has_val else test_main
            if main_key[0] == "student":  # only a student's accuracy can be the trial's best
                if has_val:
                    best = _update_best(best, generation, epoch, val_acc, test_main)
                else:  # the last epoch is the result
                    best = {"val_acc": val_acc, "test_acc": test_main, "generation": generation, "epoch": epoch}
            if keep is not None and (kept is None or val_acc > kept["val_acc"]):
                kept = {"val_acc": val_acc, "epoch": epoch,
                        "weights": {k: v.detach().clone() for k, v in keep.state_dict().items()}}
            eval_time = time.perf_counter() - t_eval
            rows = _rows(config, hooks.trial_id, facts, method, generation, epoch, val, test,
                         {"train_loss": train_loss, "train_acc": train_acc},
                         terms, epoch_time, total_time, device, selection,
                         {"setup_time_s": setup_time, "eval_time_s": eval_time})
            last_rows = rows
            # a generation that trains no student (TAKD's assistant) reports its model until a student exists
            shown = best or {"val_acc": val_acc, "test_acc": test_main}
            metrics = {
                "val_acc": val_acc, "test_acc": test_main,
                "best_val_acc": shown["val_acc"], "best_test_acc": shown["test_acc"],
                "train_loss": train_loss, "generation": generation, "epoch": epoch, "progress": progress,
                "progress_total": method.generations * epochs, "status": "ok",
                "selected_on": "val" if has_val else "test",
            }
            _export(config, method, generation, epoch, val_acc if has_val else None, test_main, best, facts)
            ckpt = {
                "generation": generation, "epoch": epoch, "method": method.state_dict(),
                "optimizer": opt.state_dict(), "schedule": sched.state_dict(), "rng": gen_gen.get_state(),
                "total_time_s": total_time, "best": best, "last_rows": _jsonable_rows(rows),
                "metrics": metrics, "gen_best": [[k[0], k[1], v] for k, v in gen_best.items()],
            }
            if kept is not None:
                ckpt["kept"] = kept
            hooks.report(metrics, rows, ckpt, final=last_epoch)
        if keep is not None and kept is not None:  # the generation's result is its best-validation weights
            keep.load_state_dict(kept["weights"])
        state = None
    _export_final(config, best, facts)
    return hooks


def _keyed(items) -> list:
    """gen_best as a checkpoint holds it ([role, exit, acc] lists) back to ((role, exit), acc) pairs."""
    return [((r, e), a) for r, e, a in (items or [])]


def _main_key(val: dict):
    """The model selection tracks: the student's final exit (or, in a generation that trains
    no student, such as TAKD's assistant generation, the model that generation reports)."""
    student = [k for k in val if k[0] == "student"] or list(val)
    return max(student, key=lambda k: -1 if k[1] is None else k[1])


def _update_best(best: dict, generation, epoch, val_acc, test_acc) -> dict:
    if not best or val_acc > best["val_acc"]:
        return {"val_acc": val_acc, "test_acc": test_acc, "generation": generation, "epoch": epoch}
    return best


def _rows(config, trial_id, facts, method, generation, epoch, val, test, train_metrics, terms, epoch_time,
          total_time, device, selection="best_val", timing=None) -> list[dict]:
    now = datetime.now(timezone.utc)
    trained_role = config.get("role", "student")
    student, teacher = facts["student"], facts["teacher"]
    hp = {**config.get("hp", {}), **method.hp}  # the values in force, defaults included
    train = config["train"]
    hparams = {**{k: train.get(k) for k in ("lr", "weight_decay", "batch_size", "epochs")}, **hp,
               "val_fraction": float(config["dataset"].get("val_fraction", 0.1)), "selection": selection}
    if config.get("teacher_epoch"):
        hparams["teacher_epoch"] = config["teacher_epoch"]
    base = {
        "study": config.get("study", "adhoc"), "stage": config.get("stage", "adhoc"), "trial_id": trial_id,
        "method": config["method"], "dataset": config["dataset"]["name"],
        "seed": int(config.get("seed", 0)), "generation": generation, "epoch": epoch, "status": "ok",
        "experiment": config.get("experiment"), "config_id": config.get("config_id"),
        "hparams": hparams,
        "assistant_arch": facts["assistant"].get("arch"), "teacher_epoch": config.get("teacher_epoch"),
        **facts.get("cost", {}),
        "loss_terms_json": json.dumps(terms, sort_keys=True),
        "temperature_now": method.current_temperature(),
        "epoch_time_s": epoch_time, "total_time_s": total_time, "timestamp": now, **(timing or {}),
        "node": _node(), "device": str(device), "code_version": config.get("code_version", "unknown"),
    }
    model_cols = {}
    sizes = facts.get("size") or {}
    if trained_role == "teacher":  # a teacher-stage trial: the trained model is a teacher
        model_cols.update(_model_cols("teacher", student, sizes.get("student")))
    else:
        model_cols.update(_model_cols("student", student))
        model_cols.update(_model_cols("teacher", teacher, sizes.get("teacher")))
        if teacher:
            model_cols["teacher_acc"] = teacher.get("acc")
    rows = []
    keys = val or test
    main_key = _main_key(keys)
    for key in sorted(keys, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
        role, exit_ = key
        v_loss, v_acc = val.get(key, (None, None))  # None: no validation split
        row = {**base, **model_cols, "role": trained_role if role == "student" else role, "exit": exit_,
               "val_loss": v_loss, "val_acc": v_acc,
               "test_loss": test[key][0] if test else None, "test_acc": test[key][1] if test else None}
        row.update(method.row_facts(role, exit_))
        if key == main_key:
            row.update(train_metrics)
        rows.append(row)
    return rows


def _model_cols(prefix: str, facts: dict, size: float | None = None) -> dict:
    """The results columns of one model; ``size`` is its `size_value` (teachers only)."""
    if not facts:
        return {}
    cols = {f"{prefix}_family": facts.get("family"), f"{prefix}_arch": facts.get("arch"),
            f"{prefix}_params": facts.get("params"), f"{prefix}_flops": facts.get("flops")}
    if prefix == "teacher":
        cols["teacher_size"] = size
        cols["teacher_size_name"] = str(facts["size"]) if facts.get("size") is not None else None
        cols["teacher_origin"] = facts.get("origin") or "trained"  # "imported": weights from a file
    return cols


def _diverged_rows(last_rows, epoch, epoch_time, total_time) -> list[dict]:
    """Rows recording divergence: the last good metrics, marked diverged, at the failing epoch."""
    rows = []
    for r in last_rows:
        rows.append({**r, "epoch": epoch, "status": "diverged", "train_loss": float("nan"),
                     "epoch_time_s": epoch_time, "total_time_s": total_time,
                     "timestamp": datetime.now(timezone.utc)})
    return rows


def _rows_from_json(text: str) -> list[dict]:
    """Rows saved by `_jsonable_rows`, timestamps parsed back."""
    rows = json.loads(text)
    for r in rows:
        if isinstance(r.get("timestamp"), str):
            r["timestamp"] = datetime.fromisoformat(r["timestamp"])
    return rows


def _jsonable_rows(rows) -> str:
    """Rows as JSON, a form a weights-only checkpoint can hold (timestamps become strings)."""
    return json.dumps(rows, default=str)


def _node() -> str:
    """`<node IP>/<first 12 hex digits of the Ray node id>`, or the hostname outside Ray.

    The node id is part of it because several Ray nodes can share one IP
    (containers, a loopback test cluster); the IP keeps it readable.
    """
    try:
        import ray

        if ray.is_initialized():
            ip = ray.util.get_node_ip_address()
            node_id = ray.get_runtime_context().get_node_id() or ""
            return f"{ip}/{node_id[:12]}" if node_id else ip
    except Exception:  # Ray absent or not in a worker: the hostname will do
        pass
    return socket.gethostname()


# --------------------------------------------------------------------------- export (teacher zoo)


def _export(config, method, generation, epoch, val_acc, test_acc, best, facts) -> None:
    """Write the trained model's weights where the study asked (best epoch, chosen epochs)."""
    export = config.get("export")
    if not export:
        return
    is_best = best.get("epoch") == epoch and best.get("generation") == generation
    chosen = epoch in export.get("epochs", ())
    if not (is_best or chosen):
        return
    weights = {"model": {k: v.detach().cpu() for k, v in _plain_state(method.student).items()}}
    if is_best:
        storage.save_state(weights, storage.join(export["uri"], "model.pt"))
    if chosen:
        storage.save_state(weights, storage.join(export["uri"], f"epoch-{epoch}.pt"))
        meta = {"epoch": epoch, "val_acc": val_acc, "test_acc": test_acc}
        storage.write_bytes(storage.join(export["uri"], f"epoch-{epoch}.json"), json.dumps(meta).encode())


def _export_final(config, best, facts) -> None:
    """meta.json last: its presence marks a complete zoo entry.

    File references are relative to the entry's folder (the study can move),
    and every weights file is recorded with its sha256, checked before use.
    """
    export = config.get("export")
    if not export:
        return
    s = facts["student"]

    def sha(name: str) -> str:
        return hashlib.sha256(storage.read_bytes(storage.join(export["uri"], name))).hexdigest()

    epoch_checkpoints = {}
    for e in export.get("epochs", ()):
        info = storage.join(export["uri"], f"epoch-{e}.json")
        if storage.exists(info):
            epoch_checkpoints[str(e)] = {"file": f"epoch-{e}.pt", "sha256": sha(f"epoch-{e}.pt"),
                                         **json.loads(storage.read_bytes(info))}
    meta = {
        "family": s.get("family"), "size": s.get("size"), "arch": s.get("arch"), "params": s.get("params"),
        "flops": s.get("flops"), "val_acc": best.get("val_acc"), "acc": best.get("test_acc"),
        "best_epoch": best.get("epoch"), "epochs": config["train"]["epochs"], "seed": config.get("seed", 0),
        "options": {k: v for k, v in s.items() if k not in ("arch", "params", "flops", "checkpoint")},
        "file": "model.pt", "sha256": sha("model.pt"),
        "epoch_checkpoints": epoch_checkpoints,
        **(export.get("meta") or {}),  # what the study records of the entry (its key's content)
    }
    storage.write_bytes(storage.join(export["uri"], "meta.json"), json.dumps(meta, indent=1).encode())


def _plain_state(model: torch.nn.Module) -> dict:
    """A state dict without torch.compile's wrapper prefix."""
    return {k.replace("_orig_mod.", ""): v for k, v in model.state_dict().items()}
