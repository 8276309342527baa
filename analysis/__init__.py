"""What the results mean: load a study's Parquet rows, chart them, and write the report.

Reads only Parquet (pyarrow, pandas, numpy, plotly, optuna); never imports
Ray or the ``study`` / ``trainables`` packages.
"""

from .load import ResultsFileError, SchemaVersionError, load, trial_summary
from .schema import SCHEMA, SCHEMA_VERSION
from .status import status_table


def __getattr__(name: str):
    # the report and its charts (plotly, scipy's statistics, the search analysis) load when a report
    # is written, not in every process that only writes or reads rows (each experiment's driver task
    # imports analysis.schema: about a CPU-second saved there)
    if name == "write_report":
        from .report import write_report

        return write_report
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")

__all__ = [
    "load", "trial_summary", "write_report", "status_table", "SCHEMA", "SCHEMA_VERSION",
    "SchemaVersionError", "ResultsFileError",
]
