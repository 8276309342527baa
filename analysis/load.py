"""Read a study's Parquet results into one DataFrame, and reduce trials to their best epoch.

Results live at ``<storage>/<study>/results/<stage>/*.parquet``. `load` accepts
the study directory, its ``results`` directory, a single Parquet file, or a URI
(``s3://``, ``gs://``, ``file://``...) resolved with
:func:`pyarrow.fs.FileSystem.from_uri`. A folder holding several studies (a
storage root) is refused with their names, never silently merged.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from .schema import (FIXED_COLUMNS, FIXED_HPARAMS, HPARAM_COLUMNS, NOT_HPARAMS, READABLE_VERSIONS, ROW_KEY,
                     SCHEMA, SCHEMA_VERSION)

_META_KEY = b"kdstudy_schema_version"
#: the keys that identify one trial's selectable result
TRIAL_KEY = ["stage", "trial_id", "generation", "role", "exit"]


class SchemaVersionError(ValueError):
    """A results file was written with another schema version than this reader's."""


class ResultsFileError(ValueError):
    """A results file could not be read (corrupt or not Parquet)."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class MultipleStudiesError(ValueError):
    """The folder holds the results of several studies (e.g. a storage root); pick one."""

    def __init__(self, message: str, studies: list[str]):
        super().__init__(message)
        self.studies = studies


@dataclass(frozen=True)
class Location:
    """Where a study's results are: a filesystem, its results dir and its study dir."""

    fs: pafs.FileSystem
    results_dir: str
    study_dir: str
    is_local: bool
    file: str | None = None  # set when a single Parquet file was given


def _study_dir_of_file(path: str) -> str:
    """The study folder of ``<study>/results/<stage>/x.parquet``; else the file's own folder."""
    parts = path.split("/")
    if "results" in parts[:-1]:
        i = len(parts) - 2 - parts[:-1][::-1].index("results")
        return "/".join(parts[:i]) or "/"
    return posixpath.dirname(path)


def locate(path) -> Location:
    """Resolve a study dir, results dir, single Parquet file or URI to a :class:`Location`."""
    text = os.fspath(path)
    if "://" in text:
        fs, base = pafs.FileSystem.from_uri(text)
    else:
        fs, base = pafs.LocalFileSystem(), os.path.abspath(text)
    base = base.rstrip("/") or "/"
    is_local = isinstance(fs, pafs.LocalFileSystem)
    if fs.get_file_info(base).type == pafs.FileType.File:
        study_dir = _study_dir_of_file(base)
        return Location(fs, posixpath.dirname(base), study_dir, is_local, file=base)
    if fs.get_file_info(posixpath.join(base, "results")).type == pafs.FileType.Directory:
        return Location(fs, posixpath.join(base, "results"), base, is_local)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no such results folder: {text}")
    study_dir = posixpath.dirname(base) if posixpath.basename(base) == "results" else base
    return Location(fs, base, study_dir, is_local)


def _result_files(loc: Location) -> list[str]:
    """Parquet files under the results dir, skipping hidden/in-progress files."""
    if loc.file is not None:
        return [loc.file]
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.results_dir, recursive=True))
    files = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        rel = posixpath.relpath(info.path, loc.results_dir)
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        files.append(info.path)
    return sorted(files)


def _short(exc: BaseException) -> str:
    """The first line of an exception's message (pyarrow's can run over several)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return re.sub(r"^Could not open Parquet input source '[^']*': ", "", first)  # the path is named already


def _check_fragment(fragment) -> int:
    """The file's schema version; raise if it is unreadable or of a version this reader cannot read."""
    path = fragment.path
    try:
        physical = fragment.physical_schema
    except (pa.ArrowException, OSError) as exc:
        raise ResultsFileError(f"cannot read results file {path}: {_short(exc)}", path) from exc
    readable = ", ".join(map(str, READABLE_VERSIONS))
    meta = (physical.metadata or {}).get(_META_KEY)
    found = None if meta is None else meta.decode()
    if found not in {str(v) for v in READABLE_VERSIONS}:
        raise SchemaVersionError(
            f"results file {path} has schema version {found} in its metadata; "
            f"this reader reads versions {readable} (current {SCHEMA_VERSION})"
        )
    if "schema_version" not in physical.names:
        raise SchemaVersionError(f"results file {path} has no schema_version column; expected {SCHEMA_VERSION}")
    try:
        col = fragment.to_table(columns=["schema_version"]).column("schema_version")
    except (pa.ArrowException, OSError) as exc:
        raise ResultsFileError(f"cannot read results file {path}: {_short(exc)}", path) from exc
    bad = sorted({v for v in col.to_pylist() if v != int(found)}, key=str)
    if bad:
        raise SchemaVersionError(
            f"results file {path} has rows with schema version {bad}; its metadata says {found} "
            f"(this reader reads versions {readable}, current {SCHEMA_VERSION})"
        )
    return int(found)


def _read_fragment(fragment, version: int) -> pa.Table:
    """One file as a table of the current SCHEMA (columns added since its version are null)."""
    if version == SCHEMA_VERSION:
        return fragment.to_table(schema=SCHEMA)
    have = set(fragment.physical_schema.names)
    table = fragment.to_table(columns=[n for n in SCHEMA.names if n in have])
    for name in SCHEMA.names:
        if name not in have:
            table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
    return table.select(SCHEMA.names).cast(SCHEMA)


def load(path, skip_bad: bool = False, study: str | None = None) -> pd.DataFrame:
    """Load every results row of a study as a DataFrame with the columns of SCHEMA, the `hparams`
    map expanded into one column per hyperparameter (`expand_hparams`; `hparam_columns` lists them).

    Every file's schema version (file metadata and ``schema_version`` column)
    must be one of READABLE_VERSIONS (older files are read with the columns
    added since as null), else :class:`SchemaVersionError` names the file and
    the versions; an unreadable (e.g. torn) file raises
    :class:`ResultsFileError` naming it. With ``skip_bad=True`` such files are
    skipped instead and listed in ``df.attrs["skipped_files"]`` as
    ``(path, reason)`` pairs. Rows of several studies (a storage root given
    instead of a study folder) raise :class:`MultipleStudiesError` naming them,
    unless `study` picks one. Rows repeating a ROW_KEY (e.g. a sink re-writing
    after a resume) are dropped, keeping the last written (by timestamp, then
    file order).
    """
    loc = locate(path)
    files = _result_files(loc)
    if not files:
        raise FileNotFoundError(f"no results (*.parquet) under {loc.results_dir}")
    tables, skipped = [], []
    for file in files:
        try:
            fragment = next(iter(ds.dataset([file], schema=SCHEMA, format="parquet",
                                            filesystem=loc.fs).get_fragments()))
            version = _check_fragment(fragment)
            try:
                tables.append(_read_fragment(fragment, version))
            except (pa.ArrowException, OSError) as exc:
                raise ResultsFileError(f"cannot read results file {file}: {_short(exc)}", file) from exc
        except (ResultsFileError, SchemaVersionError) as exc:
            if not skip_bad:
                raise
            skipped.append((file, str(exc)))
    if not tables:
        raise FileNotFoundError(f"no readable results files under {loc.results_dir} ({len(skipped)} skipped)")
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise FileNotFoundError(f"results files under {loc.results_dir} hold no rows")
    df = table.to_pandas()
    studies = sorted(df["study"].dropna().unique())
    if study is not None:
        if study not in studies:
            raise FileNotFoundError(f"no results of study {study!r} under {loc.results_dir} "
                                    f"(found: {', '.join(studies) or 'none'})")
        df = df[df["study"] == study]
    elif len(studies) > 1:
        raise MultipleStudiesError(
            f"{loc.results_dir} holds the results of {len(studies)} studies ({', '.join(studies)}); "
            f"give one study folder (e.g. {posixpath.join(loc.study_dir, studies[0])}) or pick one by name",
            studies)
    df["_order"] = range(len(df))
    df = df.sort_values(["timestamp", "_order"], na_position="first", kind="stable")
    df = df.drop_duplicates(subset=ROW_KEY, keep="last")
    df = df.sort_values(["stage", "trial_id", "generation", "role", "exit", "epoch"], kind="stable")
    df = df.drop(columns="_order").reset_index(drop=True)
    df = expand_hparams(df)
    missing = df["teacher_size_name"].isna() & df["teacher_size"].notna()  # files older than v3
    if missing.any():
        df.loc[missing, "teacher_size_name"] = df.loc[missing, "teacher_size"].map(lambda v: f"{v:g}")
    df.attrs["skipped_files"] = skipped
    return df


def _parsed(texts: pd.Series) -> dict[str, dict]:
    """{hparams_json text: its hyperparameters}, each distinct text parsed once (a trial's rows share one)."""
    out = {}
    for text in texts.dropna().unique():
        try:
            value = json.loads(text)
        except (TypeError, ValueError):
            value = None
        out[text] = value if isinstance(value, dict) else {}
    return out


def expand_hparams(df: pd.DataFrame) -> pd.DataFrame:
    """One column per hyperparameter (from `hparams_json`, which every schema version has), in place
    of the `hparams` map: the v2 named columns are completed where they are null, and a hyperparameter
    no column is named after (a plug-in method's) gets a column of its own, float where every value is
    a number. A key named like a fixed column (`seed`, `teacher_size`) is left to that column."""
    df = df.drop(columns=["hparams"], errors="ignore")
    if "hparams_json" not in df or df.empty:
        return df
    parsed = _parsed(df["hparams_json"])
    names: list[str] = []
    for params in parsed.values():
        names += [k for k in params if k not in names]
    fixed = set(FIXED_COLUMNS)
    if not names:
        return df
    table = pd.DataFrame.from_records([{k: parsed[t].get(k) for k in names} for t in parsed],
                                      index=list(parsed), columns=names)
    rows = df["hparams_json"]
    new = {}
    for name in names:
        if name in fixed:
            continue
        values = table[name].reindex(rows.values)
        values.index = df.index
        numeric = values.dropna().map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all()
        if name in df.columns:  # a v2 named column: fill what it lacks (numbers only, it is float)
            if numeric:
                df[name] = df[name].where(df[name].notna(), pd.to_numeric(values, errors="coerce"))
            continue
        new[name] = pd.to_numeric(values, errors="coerce").astype(float) if numeric else values.astype(object)
    if new:
        df = pd.concat([df, pd.DataFrame(new, index=df.index)], axis=1)
    return df


def hparam_columns(df: pd.DataFrame) -> list[str]:
    """The hyperparameters recorded in `df`'s rows (their `hparams_json`) that are columns of `df`:
    the v2 named ones in their order, then the others by name (`hparam_names`)."""
    if "hparams_json" not in df or df.empty:
        return [c for c in HPARAM_COLUMNS if c in df]
    keys = set()
    for params in _parsed(df["hparams_json"]).values():
        keys.update(params)
    return [k for k in hparam_names(keys) if k in df]


def hparam_names(keys) -> list[str]:
    """The hyperparameters among `hparams_json` keys, in display order: the v2 named ones first,
    then the others by name. Not the search's bookkeeping (budget_mode) nor fixed columns (seed,
    teacher_size), except those some method searches (ESKD's teacher_epoch)."""
    keys = set(keys) - set(NOT_HPARAMS) - (set(FIXED_COLUMNS) - set(FIXED_HPARAMS))
    return [c for c in HPARAM_COLUMNS if c in keys] + sorted(k for k in keys if k not in HPARAM_COLUMNS)


def trial_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (stage, trial_id, generation, role, exit): the epoch of best val_acc.

    The returned row is that epoch's row (so test_acc is the test accuracy at
    the epoch chosen on validation), plus ``best_epoch``, ``n_epochs`` (last
    epoch reached) and ``diverged`` (any epoch diverged). A group with no
    finite val_acc falls back to its last epoch. Ties go to the earliest epoch.
    """
    if df.empty:
        return df.assign(best_epoch=pd.Series(dtype=int), n_epochs=pd.Series(dtype=int), diverged=pd.Series(dtype=bool))
    work = df.sort_values(TRIAL_KEY + ["epoch"], kind="stable").reset_index(drop=True)
    groups = work.groupby(TRIAL_KEY, dropna=False, sort=False)
    n_epochs = groups["epoch"].transform("max")
    diverged = groups["status"].transform(lambda s: bool((s == "diverged").any()))
    score = work["val_acc"].where(work["val_acc"].notna(), -1.0)
    # rows with no val_acc rank below any real one; among them the last epoch wins
    score = score + (work["val_acc"].isna() * work["epoch"] * 1e-9)
    best_idx = score.groupby([work[k] for k in TRIAL_KEY], dropna=False, sort=False).idxmax()
    out = work.loc[best_idx.values].copy()
    out["best_epoch"] = out["epoch"]
    out["n_epochs"] = n_epochs.loc[best_idx.values].values
    out["diverged"] = diverged.loc[best_idx.values].astype(bool).values
    return out.reset_index(drop=True)


def _last_line(text: str) -> str:
    """The last non-empty line of an error text (the exception's own message)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def trial_outcomes(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (stage, trial_id): method, outcome and the error line of a failed trial.

    The outcome is the trial's ``status`` (see `analysis.schema`). A trial
    marked ``ok`` (or with no status, as older files may have) whose last
    generation did not reach its ``epochs`` is reported as ``stopped``: it
    was cut early without saying so.
    """
    if df.empty:
        return pd.DataFrame(columns=["stage", "trial_id", "method", "outcome", "error", "timestamp"])
    work = df.sort_values(["stage", "trial_id", "generation", "epoch"], kind="stable")
    g = work.groupby(["stage", "trial_id"], sort=True, dropna=False)
    last = g.tail(1).set_index(["stage", "trial_id"])
    out = pd.DataFrame({
        "method": last["method"],
        "status": last["status"],
        "error": g["error"].agg(lambda s: next((_last_line(e) for e in reversed(s.tolist())
                                                 if isinstance(e, str) and e.strip()), None)),
        "timestamp": g["timestamp"].max(),
    })
    last_gen = work[work["generation"] == g["generation"].transform("max")]
    reached = last_gen.groupby(["stage", "trial_id"])["epoch"].max()
    owed = last_gen.groupby(["stage", "trial_id"])["epochs"].max()
    short = owed.notna() & (reached < owed)
    outcome = out["status"].where(out["status"].isin(["ok", "stopped", "diverged", "failed", "running"]), "ok")
    outcome = outcome.where(~((outcome == "ok") & short.reindex(outcome.index, fill_value=False)), "stopped")
    out["outcome"] = outcome
    return out.drop(columns="status").reset_index()


def final_models(summary: pd.DataFrame) -> pd.DataFrame:
    """The model each trial reports, one row per (stage, trial_id), from a `trial_summary`.

    In stage ``teachers`` that is the teacher; everywhere else the student
    (never TriKD's online teacher or DML's peer), at the trial's last
    generation and its final exit (the largest exit index; single-exit rows
    have none).
    """
    if summary.empty:
        return summary
    wanted = summary["role"] == summary["stage"].map(lambda s: "teacher" if s == "teachers" else "student")
    rows = summary[wanted]
    rows = rows[rows["generation"] == rows.groupby(["stage", "trial_id"])["generation"].transform("max")]
    last_exit = rows.groupby(["stage", "trial_id"])["exit"].transform("max")
    rows = rows[rows["exit"].isna() | (rows["exit"] == last_exit)]
    return rows.drop_duplicates(["stage", "trial_id"]).reset_index(drop=True)
