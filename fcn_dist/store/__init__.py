"""Results store: Parquet tables ``epochs`` and ``runs`` (see :mod:`fcn_dist.store.parquet`).

Reports over them (compare, query, plots, report.html) live in :mod:`fcn_dist.report`.
"""

from fcn_dist.store.parquet import (
    EPOCH_SCHEMA,
    RUN_SCHEMA,
    SCHEMA_VERSION,
    SCHEMAS,
    ResultsStore,
    StoreWarning,
    library_versions,
    rows_to_table,
    scored_on,
)

__all__ = [
    "EPOCH_SCHEMA",
    "RUN_SCHEMA",
    "SCHEMA_VERSION",
    "SCHEMAS",
    "ResultsStore",
    "StoreWarning",
    "library_versions",
    "rows_to_table",
    "scored_on",
]
