"""The results sink: every reported row, in Parquet, exactly once, with the trial's outcome.

A Tune callback in the process that drives an experiment. Each trial owns
one file, `<study>/results/<stage>/<trial key>.parquet` (the trial key is the
study's stable identity of the trial, see `study.graph`), rewritten
atomically (temporary name, then move) with all of the trial's rows so far
each time it reports. Rows are keyed by `analysis.schema.ROW_KEY`, so a trial
that continues from a checkpoint and reports an epoch again replaces that row
instead of adding a second one; a sink started by a later driver reads the
file back first (Parquet: data, never code).

Every row of a trial carries the trial's outcome in `status`: `running`
while it trains (and after an interrupt), then, when Tune says it ended,
`ok` (it trained every epoch it owes), `stopped` (the scheduler stopped it
early), `diverged`, or `failed` with the last line of the error in `error`.
The schema is `analysis.schema.SCHEMA`, documented there.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re

import pyarrow.parquet as pq
from ray.tune import Callback

from analysis.schema import HPARAM_COLUMNS, ROW_KEY, TERMINAL_OK, numeric_hparams, rows_to_table
from trainables import storage
from trainables.trainable import error_uri

log = logging.getLogger(__name__)


def to_schema_row(row: dict) -> dict:
    """Map a row from the training loop onto the schema's columns: every numeric hyperparameter in
    the `hparams` map (and the v2 named columns), all of them in `hparams_json`."""
    row = dict(row)
    hp = row.pop("hparams", {}) or {}
    if isinstance(hp, str):
        hp = json.loads(hp)
    numeric = numeric_hparams(hp)
    for name in HPARAM_COLUMNS:
        row[name] = numeric.get(name)
    row["hparams"] = numeric
    row["hparams_json"] = json.dumps(hp, sort_keys=True, default=str)
    return row


def _upgraded(row: dict) -> dict:
    """A row read back from a file of an older schema version, with the columns added since filled
    where its own data holds them (a trial continued across an upgrade keeps one layout)."""
    if row.get("hparams") is None and row.get("hparams_json"):
        try:
            row["hparams"] = numeric_hparams(json.loads(row["hparams_json"]))
        except (ValueError, AttributeError):
            pass
    if row.get("teacher_size_name") is None and row.get("teacher_size") is not None:
        row["teacher_size_name"] = f"{row['teacher_size']:g}"
    return row


def _key(row: dict) -> tuple:
    return tuple(row.get(k) for k in ROW_KEY)


def results_file(results_uri: str, stage: str, trial_key: str) -> str:
    return storage.join(results_uri, stage, f"{trial_key}.parquet")


def read_trial(results_uri: str, stage: str, trial_key: str) -> list[dict]:
    return read_trial_file(results_uri, stage, trial_key)[0]


def read_trial_file(results_uri: str, stage: str, trial_key: str) -> tuple[list[dict], dict | None]:
    """A trial's rows and what a marker records of its file ({path, size, sha256}; None: no file)."""
    uri = results_file(results_uri, stage, trial_key)
    if not storage.exists(uri):
        return [], None
    data = storage.read_bytes(uri)
    return pq.read_table(io.BytesIO(data)).to_pylist(), file_record(stage, trial_key, data)


def file_record(stage: str, trial_key: str, data: bytes) -> dict:
    """A results file as a marker records it: its path in the study folder, size and sha256."""
    return {"path": f"results/{stage}/{trial_key}.parquet", "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def check_recorded(results_uri: str, stage: str, trial: dict) -> str | None:
    """Why the results file of a verified trial (a marker's entry) is no longer what was verified,
    or None when it is. The marker records the file's size and sha256 (a read of the file; ~1 ms for
    a trial's file); a marker written before it did only lets the file be read and its outcome checked."""
    key = trial.get("trial_key")
    uri = results_file(results_uri, stage, key)
    want = trial.get("file")
    if "file" in trial and want is None:  # verified without rows (a teacher of a zoo copied in)
        return None
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        return "it is missing"
    if want is not None:
        if len(data) != want.get("size"):
            return f"it holds {len(data)} bytes, {want.get('size')} were verified"
        if hashlib.sha256(data).hexdigest() != want.get("sha256"):
            return "its sha256 is not the one verified (the file was changed)"
        return None
    try:
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a torn file
        return f"it cannot be read ({first_line(exc)})"
    if not rows or rows[-1].get("status") not in TERMINAL_OK:
        return "its rows no longer show the trial ended"
    return None


def damaged_runs(results_uri: str, stage: str, trial: dict) -> list[tuple[dict, str]]:
    """The runs of a verified trial whose results files are no longer what was verified, each with why
    (`check_recorded`). A search trial of k seeds per trial records its k runs under `runs`; any other
    trial is its own one run."""
    out = []
    for run in trial.get("runs") or [trial]:
        why = check_recorded(results_uri, stage, run)
        if why is not None:
            out.append((run, why))
    return out


def teacher_lost(trial: dict, why: str) -> bool:
    """Whether a finished teacher trial lost verified rows (`why` from `check_recorded`): a teacher
    verified from its zoo entry alone, by a marker that did not record its file, may have none."""
    return bool(trial.get("file")) or why != "it is missing"


def damaged_teacher_text(stage: str, trial_key: str, why: str) -> str:
    """Why a teacher whose verified results file is damaged is not trained again (one line)."""
    return (f"results file results/{stage}/{trial_key}.parquet of a finished teacher is not what was verified: "
            f"{why}; the teacher is not trained again (its zoo entry, checked by sha256, is what finished "
            f"experiments distilled from, and a retrained one would differ): restore the file from a copy of the "
            f"study (`kdstudy status --skip-bad` and `kdstudy report --skip-bad` read the other files)")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return re.sub(r"^Could not open Parquet input source '[^']*': ", "", first)[:300]


def trial_outcome(results_uri: str, stage: str, trial_key: str) -> str | None:
    """The recorded outcome of a trial (None when it has no rows yet)."""
    rows = read_trial(results_uri, stage, trial_key)
    if not rows:
        return None
    return rows[-1].get("status") or "running"


def is_finished(results_uri: str, stage: str, trial_key: str) -> bool:
    return trial_outcome(results_uri, stage, trial_key) in TERMINAL_OK


def outcome_of(result: dict | None) -> str:
    """A trial's outcome from its last reported result (Tune called it complete)."""
    result = result or {}
    if result.get("status") == "diverged":
        return "diverged"
    total = result.get("progress_total")
    if total is not None and result.get("progress", 0) < total:
        return "stopped"
    return "ok"


class ParquetSink(Callback):
    """Writes each trial's rows to its own Parquet file under `results_uri/<stage>/`."""

    def __init__(self, results_uri: str, stage: str, root: str | None = None, on_event=None,
                 identity: dict | None = None):
        self.results_uri = results_uri
        self.stage = stage
        self.identity = identity or {}  # study, method, experiment, dataset: for a trial that failed at once
        self.root = root
        self.on_event = on_event  # (event, trial key, details) for live progress
        self._rows: dict[str, dict[tuple, dict]] = {}
        self._keys: dict[str, str] = {}  # Tune trial id -> trial key

    def trial_key(self, trial) -> str:
        if trial.trial_id not in self._keys:
            cfg = trial.config or {}
            job = cfg.get("job", cfg) if isinstance(cfg, dict) else {}
            self._keys[trial.trial_id] = (job or {}).get("_trial_key") or trial.trial_id
        return self._keys[trial.trial_id]

    def _trial_rows(self, key: str) -> dict[tuple, dict]:
        if key not in self._rows:
            self._rows[key] = {_key(r): _upgraded(r) for r in read_trial(self.results_uri, self.stage, key)}
        return self._rows[key]

    def write(self, key: str, rows: list[dict], status: str | None = None, error: str | None = None) -> None:
        table_rows = self._trial_rows(key)
        for r in rows:
            r = to_schema_row(r)
            r["trial_id"] = key
            table_rows[_key(r)] = r
        if not table_rows:
            if status != "failed":
                return
            # a trial that failed before its first epoch still leaves its outcome in the results
            stub = {"study": None, "method": None, "dataset": None, "experiment": None, **self.identity,
                    "stage": self.stage, "trial_id": key, "generation": 0, "role": "student", "exit": None,
                    "epoch": 0}
            table_rows[_key(stub)] = stub
        for r in table_rows.values():
            if status is not None:
                r["status"] = status
                r["error"] = error
            elif r.get("status") in (None, "ok"):
                r["status"] = "running"
        ordered = sorted(table_rows.values(), key=lambda r: (r["generation"] or 0, r["epoch"] or 0,
                                                             r["role"] or "", -1 if r["exit"] is None else r["exit"]))
        buf = io.BytesIO()
        pq.write_table(rows_to_table(ordered), buf)
        storage.write_bytes(results_file(self.results_uri, self.stage, key), buf.getvalue())

    def _event(self, event: str, key: str, **details) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event, key, details)
            except Exception:  # progress is best effort; results are not
                log.debug("progress event failed", exc_info=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._event("start", self.trial_key(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rows = result.pop("rows", None)  # rows live in Parquet, not in Tune's own logs
        key = self.trial_key(trial)
        if rows:
            self.write(key, rows)
        self._event("result", key, progress=result.get("progress"), total=result.get("progress_total"),
                    val=result.get("best_val_acc"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        key = self.trial_key(trial)
        outcome = outcome_of(trial.last_result)
        self.write(key, [], status=outcome)
        self._event(outcome, key, val=(trial.last_result or {}).get("best_val_acc"))

    def on_trial_error(self, iteration, trials, trial, **info):
        key = self.trial_key(trial)
        error = self.error_line(key)
        self.write(key, [], status="failed", error=error)
        self._event("failed", key, error=error)

    def error_line(self, key: str) -> str:
        """The last line of the trial's error, as the trial wrote it (plain text)."""
        if self.root:
            uri = error_uri(self.root, key)
            if storage.exists(uri):
                try:
                    return storage.read_bytes(uri).decode(errors="replace").strip().splitlines()[-1][:2000]
                except (OSError, IndexError):
                    pass
        return "the trial's process ended with an error (see the study's logs/)"
