"""What the results mean: load a study's Parquet rows, chart them, and write the report.

Reads only Parquet (pyarrow, pandas, numpy, plotly, optuna); never imports
Ray or the ``study`` / ``trainables`` packages.
"""

from .load import ResultsFileError, SchemaVersionError, load, trial_summary
from .report import write_report
from .schema import SCHEMA, SCHEMA_VERSION
from .status import status_table

__all__ = [
    "load", "trial_summary", "write_report", "status_table", "SCHEMA", "SCHEMA_VERSION",
    "SchemaVersionError", "ResultsFileError",
]
