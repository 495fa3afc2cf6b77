"""DuckDB SQL over the results store's ``epochs`` and ``runs`` tables."""

from __future__ import annotations

import re

import pyarrow as pa

from fcn_dist.errors import FcnError
from fcn_dist.store import ResultsStore


def query(store: ResultsStore | str, sql: str) -> pa.Table:
    """Run DuckDB ``sql`` over the views ``epochs`` and ``runs`` (a consistent snapshot read
    through :class:`ResultsStore`); returns a pyarrow Table. Needs the ``duckdb`` extra."""
    try:
        import duckdb
    except ImportError:
        raise FcnError("fcn-results query needs DuckDB: pip install 'fcn-dist[duckdb]' "
                       "(or read the store with pandas: pandas.read_parquet(STORE/'runs'))"
                       ) from None
    st = store if isinstance(store, ResultsStore) else ResultsStore(store)
    con = duckdb.connect(":memory:")
    try:
        for name in ("epochs", "runs"):
            if re.search(rf"\b{name}\b", sql, re.IGNORECASE):  # read only the tables named
                con.register(name, st.read(name))
        try:
            rel = con.sql(sql)
            if rel is None:  # a statement without a result
                return pa.table({})
            for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):  # across DuckDB versions
                if hasattr(rel, name):
                    out = getattr(rel, name)()
                    return out if isinstance(out, pa.Table) else out.read_all()
            return pa.Table.from_pandas(rel.df(), preserve_index=False)
        except duckdb.Error as exc:
            raise FcnError(f"query failed: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
