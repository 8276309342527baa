"""The results sink: every reported row, in Parquet, exactly once.

A driver-side Tune callback. Each trial owns one file,
`<study>/results/<stage>/<trial_id>.parquet`, rewritten atomically (temporary
name, then move) with all of the trial's rows so far each time it reports.
Rows are keyed by `analysis.schema.ROW_KEY`, so a trial that resumes from a
checkpoint and reports an epoch again replaces that row instead of adding a
second one; after a driver restart the sink reads the file back first.
The schema is `analysis.schema.SCHEMA`, documented there.
"""

from __future__ import annotations

import io
import json
import logging

import pyarrow.parquet as pq
from ray.tune import Callback

from analysis.schema import HPARAM_COLUMNS, ROW_KEY, rows_to_table
from trainables import storage

log = logging.getLogger(__name__)


def to_schema_row(row: dict) -> dict:
    """Map a row from the training loop onto the schema's columns."""
    row = dict(row)
    hp = row.pop("hparams", {}) or {}
    if isinstance(hp, str):
        hp = json.loads(hp)
    for name in HPARAM_COLUMNS:
        value = hp.get(name)
        row[name] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    row["hparams_json"] = json.dumps(hp, sort_keys=True, default=str)
    return row


def _key(row: dict) -> tuple:
    return tuple(row.get(k) for k in ROW_KEY)


class ParquetSink(Callback):
    """Writes each trial's rows to its own Parquet file under `results_uri/<stage>/`."""

    def __init__(self, results_uri: str, stage: str, on_rows=None):
        self.results_uri = results_uri
        self.stage = stage
        self.on_rows = on_rows
        self._rows: dict[str, dict[tuple, dict]] = {}

    def file_uri(self, trial_id: str) -> str:
        return storage.join(self.results_uri, self.stage, f"{trial_id}.parquet")

    def _trial_rows(self, trial_id: str) -> dict[tuple, dict]:
        if trial_id not in self._rows:
            existing: dict[tuple, dict] = {}
            uri = self.file_uri(trial_id)
            if storage.exists(uri):  # a restarted driver: keep what was written
                for r in pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist():
                    existing[_key(r)] = r
            self._rows[trial_id] = existing
        return self._rows[trial_id]

    def write(self, trial_id: str, rows: list[dict]) -> None:
        table_rows = self._trial_rows(trial_id)
        for r in rows:
            r = to_schema_row(r)
            r["trial_id"] = trial_id
            table_rows[_key(r)] = r
        ordered = sorted(table_rows.values(), key=lambda r: (r["generation"] or 0, r["epoch"] or 0,
                                                             r["role"] or "", -1 if r["exit"] is None else r["exit"]))
        table = rows_to_table(ordered)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(self.file_uri(trial_id), buf.getvalue())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rows = result.pop("rows", None)  # rows live in Parquet, not in Tune's own logs
        if rows:
            self.write(trial.trial_id, rows)
            if self.on_rows:
                self.on_rows(trial, rows)
