"""Column statistics: a partial profile per chunk, and the merge of partials into one profile.

Statistics are computed by pyarrow (value counts, min/max, mean, variance) and kept in Apache
DataSketches where they must merge across chunks: HLL for distinct estimates, KLL for quantiles and
histograms, frequent-items for top values beyond the exact bound. What is exact and what is an
estimate is stated in the profile itself:

* exact: row count, null count, min/max, mean and standard deviation (merged with Chan's formula),
  duplicate rows (64-bit row hashes compared across all chunks), distinct count and top values while
  the column has at most ``exact_distinct_bound`` distinct values;
* estimates (labelled ``"exact": false`` with bounds): distinct count beyond the bound (HLL), top
  values beyond it (frequent items), quantiles and histograms (KLL, with its rank error).
"""
from __future__ import annotations

import base64
import math
import os
from collections import Counter, deque
from datetime import date, datetime

import datasketches as ds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HLL_LG_K = 12  # ~1.6% relative standard error
KLL_K = 200  # ~1.65% normalized rank error
FREQ_LG_MAX_K = 10
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
HISTOGRAM_BINS = 20
TOP_VALUES = 10


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def kind_of(arrow_type: pa.DataType) -> str:
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_integer(arrow_type):
        return "integer"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    if pa.types.is_date(arrow_type):
        return "date"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_null(arrow_type):
        return "null"
    return "other"


def _json_value(value):
    """A value as JSON: dates as ISO text, non-finite floats as text (PostgreSQL jsonb refuses NaN)."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _distinct_values(values: pa.Array, kind: str) -> list:
    """Distinct values as JSON values (what ``_json_value`` gives each), converted per column, not per value:
    integers, booleans and text are JSON already; a float column only needs its few non-finite values as text."""
    if kind in ("integer", "boolean", "string"):
        return values.to_pylist()
    if kind == "float" and pa.types.is_floating(values.type):
        python = values.to_pylist()
        for i in np.flatnonzero(~np.isfinite(values.to_numpy(zero_copy_only=False))):
            python[i] = str(python[i])
        return python
    return [_json_value(v) for v in values.to_pylist()]


def _finite(value):
    return value if value is None or not isinstance(value, float) or math.isfinite(value) else None


# --- one chunk ---------------------------------------------------------------------------------------

def profile_column(column: pa.ChunkedArray, exact_distinct_bound: int) -> dict:
    kind = kind_of(column.type)
    nulls = column.null_count
    part = {"type": kind, "arrow_type": str(column.type), "count": len(column) - nulls, "nulls": nulls}
    if kind in ("null", "other") or part["count"] == 0:
        return part
    valid = pc.drop_null(column)
    counts = pc.value_counts(valid)
    values = _distinct_values(counts.field("values"), kind)
    frequencies = counts.field("counts").to_pylist()
    hll = ds.hll_sketch(HLL_LG_K)
    freq = ds.frequent_strings_sketch(FREQ_LG_MAX_K)
    # One sketch call per distinct value (datasketches has no array update for these two): driven by map()
    # in C, not a Python loop, which was most of a chunk's time (issue 17's profile). Booleans go to the
    # HLL as ints (as isinstance(True, int) always sent them); the frequent items are keyed by str(value).
    deque(map(hll.update, values), maxlen=0)
    deque(map(freq.update, values if kind == "string" else map(str, values), frequencies), maxlen=0)
    part["hll"] = _b64(hll.serialize_compact())
    part["freq"] = _b64(freq.serialize())
    part["exact"] = [[v, n] for v, n in zip(values, frequencies)] if len(values) <= exact_distinct_bound else None

    if kind in ("integer", "float"):
        minmax = pc.min_max(valid)
        floats = valid.cast(pa.float64()).to_numpy()
        finite = floats[np.isfinite(floats)]
        part.update(min=_finite(minmax["min"].as_py()), max=_finite(minmax["max"].as_py()), n=int(finite.size),
                    mean=float(finite.mean()) if finite.size else 0.0,
                    m2=float(((finite - finite.mean()) ** 2).sum()) if finite.size else 0.0)
        kll = ds.kll_doubles_sketch(KLL_K)
        if finite.size:
            kll.update(finite)
        part["kll"] = _b64(kll.serialize())
    elif kind in ("date", "timestamp"):
        minmax = pc.min_max(valid)
        part.update(min=_json_value(minmax["min"].as_py()), max=_json_value(minmax["max"].as_py()))
    elif kind == "string":
        lengths = pc.min_max(pc.utf8_length(valid))
        part.update(min_length=lengths["min"].as_py(), max_length=lengths["max"].as_py())
    return part


def profile_table(table: pa.Table, exact_distinct_bound: int) -> dict:
    return {
        "rows": table.num_rows,
        "columns": {name: profile_column(table.column(name), exact_distinct_bound) for name in table.column_names},
    }


def row_hashes(table: pa.Table) -> np.ndarray:
    """A 64-bit hash of every row's parsed values, equal for equal rows in any chunk and any process."""
    os.environ.setdefault("POLARS_MAX_THREADS", "1")  # one core per prefork child
    import polars as pl

    return pl.from_arrow(table).hash_rows(seed=0, seed_1=1, seed_2=2, seed_3=3).to_numpy()


def duplicate_count(hash_groups) -> int:
    """Rows equal to an earlier row, given row hashes split into groups by hash value.

    Each group is a list of arrays (memory-mapped .npy files are fine): it is copied into one buffer,
    sorted in place and compared with its neighbours, then freed before the next group, so the merge
    holds one group at a time (DATASETS_HASH_GROUP_BYTES).
    """
    duplicates = 0
    for arrays in hash_groups:
        hashes = np.empty(sum(a.shape[0] for a in arrays), dtype=np.uint64)
        position = 0
        for array in arrays:
            hashes[position:position + array.shape[0]] = array
            position += array.shape[0]
        del arrays
        hashes.sort()
        duplicates += int(np.count_nonzero(hashes[1:] == hashes[:-1]))
        del hashes
    return duplicates


# --- merge -------------------------------------------------------------------------------------------
# Partial profiles are folded in one at a time, so the merge holds one chunk's partial plus the
# accumulated state (sketches of fixed size, exact counts up to the bound), whatever the chunk count.

def _lower(a, b):
    return b if a is None else a if b is None else min(a, b)


def _upper(a, b):
    return b if a is None else a if b is None else max(a, b)


class ColumnAccumulator:
    def __init__(self, exact_distinct_bound: int):
        self.bound = exact_distinct_bound
        self.kind = self.arrow_type = None
        self.count = self.nulls = 0
        self.has_values = False
        self.exact: Counter | None = Counter()
        self.hll = ds.hll_union(HLL_LG_K)
        self.freq = self.kll = None
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.min = self.max = self.min_length = self.max_length = None

    def add(self, part: dict) -> None:
        self.kind, self.arrow_type = part["type"], part["arrow_type"]
        self.count += part["count"]
        self.nulls += part["nulls"]
        if not part["count"] or "hll" not in part:
            return
        self.has_values = True
        self.hll.update(ds.hll_sketch.deserialize(_unb64(part["hll"])))
        freq = ds.frequent_strings_sketch.deserialize(_unb64(part["freq"]))
        if self.freq is None:
            self.freq = freq
        else:
            self.freq.merge(freq)
        if self.exact is not None:
            if part.get("exact") is None:
                self.exact = None
            else:
                for value, n in part["exact"]:
                    self.exact[value] += n
                if len(self.exact) > self.bound:
                    self.exact = None
        self.min, self.max = _lower(self.min, part.get("min")), _upper(self.max, part.get("max"))
        self.min_length = _lower(self.min_length, part.get("min_length"))
        self.max_length = _upper(self.max_length, part.get("max_length"))
        if part.get("n"):  # Chan et al.'s parallel update of (n, mean, M2)
            nb, total = part["n"], self.n + part["n"]
            delta = part["mean"] - self.mean
            self.mean += delta * nb / total
            self.m2 += part["m2"] + delta * delta * self.n * nb / total
            self.n = total
        if "kll" in part:
            kll = ds.kll_doubles_sketch.deserialize(_unb64(part["kll"]))
            if self.kll is None:
                self.kll = kll
            else:
                self.kll.merge(kll)

    def result(self) -> dict:
        total = self.count + self.nulls
        column = {"type": self.kind, "arrow_type": self.arrow_type, "count": self.count, "nulls": self.nulls,
                  "null_fraction": self.nulls / total if total else 0.0}
        if not self.has_values:
            column["distinct"] = {"value": 0, "exact": True}
            column["top_values"] = {"exact": True, "values": []}
            return column
        if self.exact is not None:
            column["distinct"] = {"value": len(self.exact), "exact": True}
            column["top_values"] = {"exact": True, "values": [[v, n] for v, n in self.exact.most_common(TOP_VALUES)]}
        else:
            result = self.hll.get_result()
            column["distinct"] = {"value": int(round(result.get_estimate())), "exact": False, "method": "HLL sketch",
                                  "lower_bound": int(result.get_lower_bound(2)),
                                  "upper_bound": int(result.get_upper_bound(2)), "exact_bound": self.bound}
            items = self.freq.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_POSITIVES)[:TOP_VALUES]
            column["top_values"] = {"exact": False, "method": "frequent items sketch",
                                    "max_error": int(self.freq.epsilon * self.freq.total_weight),
                                    "values": [[item, estimate] for item, estimate, _lower, _upper in items]}
        if self.kind in ("integer", "float"):
            column.update(self._numeric())
        elif self.kind in ("date", "timestamp"):
            column.update(min=self.min, max=self.max)
        elif self.kind == "string":
            column.update(min_length=self.min_length, max_length=self.max_length)
        elif self.kind == "boolean" and self.exact is not None:
            column.update(true=self.exact.get(True, 0), false=self.exact.get(False, 0))
        return column

    def _numeric(self) -> dict:
        summary = {"min": self.min, "max": self.max, "mean": self.mean if self.n else None,
                   "stddev": math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else None,  # sample stddev
                   "quantiles": None, "histogram": None}
        kll = self.kll
        if kll is None or kll.is_empty():
            return summary
        rank_error = kll.normalized_rank_error(False)
        values = kll.get_quantiles(list(QUANTILES))
        summary["quantiles"] = {"exact": False, "method": "KLL sketch", "rank_error": rank_error,
                                "values": {f"p{int(q * 100)}": _finite(float(v)) for q, v in zip(QUANTILES, values)}}
        lo, hi = float(kll.get_min_value()), float(kll.get_max_value())
        if hi > lo:
            edges = list(np.linspace(lo, hi, HISTOGRAM_BINS + 1))
            counts = [int(round(m * kll.n)) for m in kll.get_pmf(edges[1:-1])]
        else:
            edges, counts = [lo, hi], [int(kll.n)]
        summary["histogram"] = {"exact": False, "method": "KLL sketch", "rank_error": rank_error,
                                "edges": [float(e) for e in edges], "counts": counts}
        return summary


def merge_profiles(parts, duplicate_rows: int, exact_distinct_bound: int, meta: dict) -> dict:
    """One profile from the chunks' partial profiles (any iterable, consumed one partial at a time)."""
    rows = 0
    columns: dict[str, ColumnAccumulator] = {}
    for part in parts:
        rows += part["rows"]
        for name, column in part["columns"].items():
            columns.setdefault(name, ColumnAccumulator(exact_distinct_bound)).add(column)
    return {
        "rows": rows,
        "columns_count": len(columns),
        "duplicate_rows": {"value": duplicate_rows, "exact": True,
                           "method": "64-bit row hashes compared across all chunks"},
        "columns": [{"name": name, **acc.result()} for name, acc in columns.items()],
        **meta,
    }
