"""`group_rows`: the groups of a dataset's records, also where a column holds no value at all
(an empty dataset, or a column no record fills: Arrow gives it the null type)."""

from __future__ import annotations

import pyarrow as pa

from f2llm.data.corpus import group_rows


def test_group_rows_of_null_typed_columns() -> None:
    empty = pa.table({"language": pa.array([], pa.null()), "direction": pa.array([], pa.null())})
    assert group_rows(empty, ["language", "direction"]) == {}
    table = pa.table({"language": ["fr", "de", "fr"],
                      "direction": pa.array([None] * 3, pa.null())})
    groups = group_rows(table, ["language", "direction"])
    assert {k: v.tolist() for k, v in groups.items()} == {"fr/": [0, 2], "de/": [1]}
