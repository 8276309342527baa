"""The results schema: the one place that says what a results row holds.

Every row a study writes, whatever the method, has exactly these columns
(long format: one row per trial x epoch x generation x role x exit). A
column that does not apply to a row is null. `SCHEMA_VERSION` is stored in
every row and in each Parquet file's metadata; readers refuse other versions.

Columns
-------
Identity
  schema_version   int16   version of this schema
  study            string  study name from the spec
  stage            string  teachers | baseline | search | confirm
  trial_id         string  Ray Tune trial id (or a local id outside Ray)
  method           string  registered method name (scratch, kd, rkd, trikd, ...)
  dataset          string  dataset name (mnist1d, cifar10, cifar100, ...)
  seed             int64   seed of the trial (data order, init, augmentation)
  role             string  student | teacher (which model the metrics are of)
  generation       int32   curriculum generation (TriKD); 0 for other methods
  exit             int32   exit index of a multi-exit model; null otherwise
  exit_flops       float64 cumulative forward FLOPs per sample up to that exit
  epoch            int32   1-based epoch within the generation (0: an imported teacher's evaluation,
                           nothing trained)
  status           string  the trial's outcome, the same on every row of a trial:
                           ok        trained every epoch it owes (completed)
                           stopped   stopped early by the search's scheduler (ASHA); its
                                     epochs are real but it was never measured at full budget
                           diverged  the training loss became NaN/inf (rows repeat the last good metrics)
                           failed    the trial raised; `error` holds the last line of the error
                           running   not finished yet (in progress, or cut by an interrupt)
  experiment       string  the experiment (one Tuner) the trial belongs to; a hash of its content
  config_id        string  hash of the trial's whole configuration without its seed (method, models,
                           data, recipe, every hyperparameter fixed or searched): confirm runs of one
                           configuration on several seeds share it, and share it with their search
                           trial; two runs that differ in anything else never do (v3; v2 rows of a study
                           begun before v3 hash the searched values only, and so do later rows of it)
  error            string  last line of the error of a failed trial; null otherwise
Models
  student_family, student_arch (string), student_params (int64), student_flops (float64):
                   the deployed student (forward FLOPs per sample); never its connectors
  connector_params int64   parameters the method trains beside its models and drops after training
                           (connectors: FitNets' regressor, CRD's embedding heads, ReviewKD's fusion
                           path); 0 for a method without; part of the training cost only (v3, later)
  connector_flops  float64 forward FLOPs per training sample of those connectors (the loss's own
                           arithmetic, such as CRD's memory-bank scores, not included); 0 without
  teacher_family, teacher_arch (string), teacher_params (int64), teacher_flops (float64)
  teacher_size     float64 the teacher's size knob (ladder position)
  teacher_size_name string the teacher's size as the ladder writes it ("16", "resnet18")
  teacher_origin   string  where the teacher's weights come from: trained (by this study: the
                           teachers stage, or online by the method) | imported (a weights file named
                           by the spec's teachers.weights, evaluated here, never trained); null
                           where the row has no teacher
  teacher_acc      float64 the (frozen or online) teacher's own test accuracy
  assistant_arch   string  TAKD teacher assistant
  teacher_epoch    int32   ESKD: epoch of the teacher checkpoint distilled from
Hyperparameters
  hparams          map<string, float64>  every numeric hyperparameter of the trial, whatever
                           its name (a plug-in method's own included): the recipe (lr,
                           weight_decay, batch_size, epochs), the method's parameters, val_fraction
  hparams_json     string  every hyperparameter of the trial as JSON (non-numeric ones too, such as
                           kd_reduction, and the search's budget_mode)
  lr, weight_decay, batch_size, epochs, temperature, alpha, rkd_distance_weight,
  rkd_angle_weight, anchor_weight, mutual_weight, generations, distill_weight,
  temperature_factor, maxprob, kd_reduction, dist_beta, dist_gamma, ce_weight, kd_weight,
  dkd_alpha, dkd_beta, kd_warmup_epochs, val_fraction
                   float64 the hyperparameters that had a column of their own in v2, kept with
                           the same values so that queries written against v2 files keep working
                           (null where the method has no such parameter). The list is closed:
                           a hyperparameter added since lives in `hparams` only.
Metrics
  train_loss, train_acc, val_loss, val_acc, test_loss, test_acc (float64, accuracy in [0, 1]);
                   the test split is evaluated at the epochs that can be reported (each new best
                   validation epoch and the last epoch); test_* are null on the other epochs
  temperature_now  float64 temperature in force at the end of the epoch (multi-exit schedule)
  loss_terms_json  string  mean of each named loss term over the epoch, as JSON
Timing and provenance
  epoch_time_s, total_time_s (float64)  training time of the epoch, and of the trial so far
  setup_time_s     float64 seconds from the trial's start (in its process) to its first training step
  eval_time_s      float64 seconds spent evaluating (validation, and test where read) after the epoch
  timestamp        timestamp[us, UTC] when the epoch's row was made
  node             string  "<node IP>/<Ray node id, 12 hex digits>" the epoch ran on (hostname outside Ray)
  device           string  cpu | cuda:N
  code_version     string  kdstudy version and git revision

Versions
--------
1  the first layout.
2  added experiment, config_id, error, setup_time_s, eval_time_s (null when reading a v1 file).
3  hyperparameters are open: `hparams` (a map) holds every numeric hyperparameter of every
   method, so a plug-in's `my_margin` is recorded without a column of its own; the v2 named
   hyperparameter columns stay, frozen, with the same values. Added `teacher_size_name`.
   `config_id` covers the whole configuration (see above).
   Later in v3: `connector_params` and `connector_flops` (the training cost beyond the deployed
   models, for the feature methods' connectors); v3 files written before them read them as null.
   Later in v3 (no version change: a column added, null when absent): `teacher_origin`, and
   stage `teachers` rows of method `import` (an imported teacher's evaluation, epoch 0). v3
   files written before it read with `teacher_origin` null (their teachers were all trained).
   Reading: `analysis.load` expands the hyperparameters of every version (from `hparams_json`,
   which every version has) into one DataFrame column each, as before (`df["temperature"]`,
   `df["my_margin"]`); the map itself is not a DataFrame column. v1 and v2 files read with the
   columns added since as null (`teacher_size_name` filled from `teacher_size`).
   Querying with DuckDB: a v2 query on a named column (`WHERE temperature > 4`) runs unchanged on
   v3 files; the v3 form, which works for any hyperparameter, is `hparams['temperature']` (null
   where the trial has none, as `hparams['my_margin']` is for built-in methods). A folder mixing v2
   and v3 files (a study resumed across the upgrade) reads with
   `read_parquet('.../results/*/*.parquet', union_by_name = true)`.
   A method's hyperparameter may be called anything but a fixed column (`seed`, `epoch`, `val_acc`,
   ...): `hparam_name_problem` says why, and `trainables.methods.register` refuses such a method.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 3
#: versions this reader still reads (missing columns read as null; see Versions above)
READABLE_VERSIONS = (1, 2, 3)
#: trial outcomes (the `status` column)
STATUSES = ("ok", "stopped", "diverged", "failed", "running")
#: outcomes of a trial that ended normally (an experiment owes only such trials)
TERMINAL_OK = ("ok", "stopped", "diverged")

_ID = [
    ("schema_version", pa.int16()),
    ("study", pa.string()),
    ("stage", pa.string()),
    ("trial_id", pa.string()),
    ("method", pa.string()),
    ("dataset", pa.string()),
    ("seed", pa.int64()),
    ("role", pa.string()),
    ("generation", pa.int32()),
    ("exit", pa.int32()),
    ("exit_flops", pa.float64()),
    ("epoch", pa.int32()),
    ("status", pa.string()),
    ("experiment", pa.string()),
    ("config_id", pa.string()),
    ("error", pa.string()),
]
_MODELS = [
    ("student_family", pa.string()),
    ("student_arch", pa.string()),
    ("student_params", pa.int64()),
    ("student_flops", pa.float64()),
    ("connector_params", pa.int64()),
    ("connector_flops", pa.float64()),
    ("teacher_family", pa.string()),
    ("teacher_arch", pa.string()),
    ("teacher_params", pa.int64()),
    ("teacher_flops", pa.float64()),
    ("teacher_size", pa.float64()),
    ("teacher_size_name", pa.string()),
    ("teacher_origin", pa.string()),
    ("teacher_acc", pa.float64()),
    ("assistant_arch", pa.string()),
    ("teacher_epoch", pa.int32()),
]
#: the hyperparameters that had a column of their own in v2, kept (frozen: never extended) so that
#: queries written against v2 files keep working; every hyperparameter is in `hparams`
HPARAM_COLUMNS = [
    "lr", "weight_decay", "batch_size", "epochs", "temperature", "alpha",
    "rkd_distance_weight", "rkd_angle_weight", "anchor_weight", "mutual_weight",
    "generations", "distill_weight", "temperature_factor", "maxprob",
    "kd_reduction", "dist_beta", "dist_gamma", "ce_weight", "kd_weight", "dkd_alpha", "dkd_beta",
    "kd_warmup_epochs", "val_fraction",
]
_HPARAMS = [(name, pa.float64()) for name in HPARAM_COLUMNS] + [
    ("hparams_json", pa.string()), ("hparams", pa.map_(pa.string(), pa.float64()))]
METRIC_COLUMNS = ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"]
_METRICS = [(name, pa.float64()) for name in METRIC_COLUMNS] + [
    ("temperature_now", pa.float64()),
    ("loss_terms_json", pa.string()),
]
_PROVENANCE = [
    ("epoch_time_s", pa.float64()),
    ("total_time_s", pa.float64()),
    ("setup_time_s", pa.float64()),
    ("eval_time_s", pa.float64()),
    ("timestamp", pa.timestamp("us", tz="UTC")),
    ("node", pa.string()),
    ("device", pa.string()),
    ("code_version", pa.string()),
]

SCHEMA = pa.schema(
    [pa.field(n, t) for n, t in _ID + _MODELS + _HPARAMS + _METRICS + _PROVENANCE],
    metadata={b"kdstudy_schema_version": str(SCHEMA_VERSION).encode()},
)
COLUMNS = SCHEMA.names
#: the columns that identify a row; no two rows of a results dataset share them
ROW_KEY = ["study", "stage", "trial_id", "generation", "role", "exit", "epoch"]
#: columns added in version 2 (null when reading a version-1 file)
ADDED_IN_V2 = ["experiment", "config_id", "error", "setup_time_s", "eval_time_s"]
#: columns added in version 3 (null when reading an older file)
ADDED_IN_V3 = ["hparams", "teacher_size_name", "connector_params", "connector_flops", "teacher_origin"]
#: `teacher_origin` values (see Columns)
TEACHER_ORIGINS = ("trained", "imported")
#: the columns that are not hyperparameters: a hyperparameter may not be called so
FIXED_COLUMNS = [n for n in COLUMNS if n not in HPARAM_COLUMNS and n not in ("hparams", "hparams_json")]
#: fixed columns that are also a searched parameter of some method (ESKD searches the teacher's epoch)
FIXED_HPARAMS = ["teacher_epoch"]
#: keys of `hparams_json` that describe the search, not the trial's configuration
NOT_HPARAMS = ["budget_mode", "selection"]


def hparam_name_problem(name: str) -> str | None:
    """Why a method may not declare a hyperparameter called `name` (None: it may)."""
    if not isinstance(name, str) or not name:
        return f"hyperparameter name {name!r} must be a non-empty string"
    if name in FIXED_COLUMNS or name in ("hparams", "hparams_json") or name in NOT_HPARAMS:
        return (f"hyperparameter {name!r} has the name of a results column (analysis.schema) that holds "
                f"something else; call it otherwise (e.g. '<method>_{name}')")
    return None


def numeric_hparams(hp: dict) -> dict[str, float]:
    """The `hparams` map of a row: every numeric (not boolean) hyperparameter, as float."""
    return {str(k): float(v) for k, v in (hp or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Build a table of exactly SCHEMA from row dicts; unknown keys are an error."""
    unknown = sorted({k for r in rows for k in r} - set(COLUMNS))
    if unknown:
        raise ValueError(f"row has columns not in the results schema: {unknown}")
    data = {name: [r.get(name) for r in rows] for name in COLUMNS}
    data["schema_version"] = [SCHEMA_VERSION] * len(rows)
    return pa.Table.from_pydict(data, schema=SCHEMA)
