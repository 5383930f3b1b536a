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
import struct
from collections import Counter
from datetime import date, datetime
from decimal import Decimal

import datasketches as ds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from apps.datasets.source import DatasetInputError

HLL_LG_K = 12  # ~1.6% relative standard error
HLL_K = 1 << HLL_LG_K
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
    if pa.types.is_floating(arrow_type):
        return "float"
    if pa.types.is_decimal(arrow_type):  # exact values: reported as decimal text, never through a float
        return "decimal"
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
    if pa.types.is_date32(values.type):  # Arrow's text of a date32 is date.isoformat() (years 1-9999 as 4 digits)
        return values.cast(pa.string()).to_pylist()
    if kind == "decimal":  # Arrow's text of a decimal is str(decimal.Decimal): every digit of the scale kept
        return values.cast(pa.string()).to_pylist()
    if kind == "float" and pa.types.is_floating(values.type):
        python = values.to_pylist()
        for i in np.flatnonzero(~np.isfinite(values.to_numpy(zero_copy_only=False))):
            python[i] = str(python[i])
        return python
    return [_json_value(v) for v in values.to_pylist()]


def _finite(value):
    return value if value is None or not isinstance(value, float) or math.isfinite(value) else None


# --- sketches built from arrays ---------------------------------------------------------------------
# datasketches has no array update for HLL or frequent items, and one Python-level call per distinct value
# was most of a chunk's time (issue 17). A chunk builds both sketches with numpy instead and hands over
# their standard serialized images, which datasketches deserializes, merges and estimates as before:
#
# * HLL: each distinct value's 64-bit hash (HLL_HASH) -> slot (low LG_K bits) and rank (leading zeros of
#   the other bits + 1); registers = max rank per slot (an HLL_8 image, mergeable across chunks and children
#   by max, which is what hll_union does). The image is flagged out-of-order, so datasketches estimates it
#   with its composite estimator (the one any union result uses) from registers, kxq and the zero count
#   written here.
# * frequent items: the chunk's exact value counts are known (value_counts), so it keeps the FREQ_KEPT
#   most frequent values with their exact counts and sets the sketch's offset to the largest count it
#   dropped. Every value's true count is then within [lower bound, lower bound + offset], the sketch's own
#   invariant, and offset <= rows / (FREQ_KEPT + 1), inside the sketch's a-priori error (epsilon * weight).

HLL_HASH = "fmix64(value bits) / fmix64(polars hash) v1"  # in each partial: chunks hashed differently never merge
FREQ_KEPT = 3 * (1 << FREQ_LG_MAX_K) // 4  # 768: what a frequent-items map of FREQ_LG_MAX_K holds
_FMIX_1, _FMIX_2, _SHIFT_33 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(33)


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: a bijection that spreads every input bit over every output bit."""
    h = h ^ (h >> _SHIFT_33)
    h *= _FMIX_1
    h ^= h >> _SHIFT_33
    h *= _FMIX_2
    h ^= h >> _SHIFT_33
    return h


def value_hashes(values: pa.Array, kind: str) -> np.ndarray:
    """A 64-bit hash per value, the same for the same value in any chunk and any process.

    Fixed-width values hash their own bits (no collisions before the HLL's slots); text and anything else
    hash polars' seeded hash (what row_hashes uses), finalised the same way.
    """
    if kind in ("integer", "float", "boolean"):
        array = values.to_numpy(zero_copy_only=False)
        if kind == "float":
            bits = array.astype(np.float64, copy=False).view(np.uint64)
        else:
            bits = array.astype(np.uint64 if array.dtype.kind == "u" else np.int64, copy=False).view(np.uint64)
    elif kind in ("date", "timestamp"):
        width = pa.int32() if pa.types.is_date32(values.type) else pa.int64()
        bits = values.view(width).to_numpy().astype(np.int64).view(np.uint64)
    else:
        os.environ.setdefault("POLARS_MAX_THREADS", "1")  # one core per prefork child
        import polars as pl

        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            values = values.cast(pa.string())
        bits = pl.from_arrow(values).hash(seed=0, seed_1=1, seed_2=2, seed_3=3).to_numpy()
    return _fmix64(bits.copy() if not bits.flags.writeable else bits)


def hll_registers(hashes: np.ndarray) -> np.ndarray:
    """HLL registers (one byte per slot) from 64-bit hashes."""
    slots = (hashes & np.uint64(HLL_K - 1)).astype(np.intp)
    _mantissa, bit_length = np.frexp((hashes >> np.uint64(HLL_LG_K)).astype(np.float64))  # exact below 2**53
    ranks = (64 - HLL_LG_K + 1 - bit_length).astype(np.uint8)
    registers = np.zeros(HLL_K, dtype=np.uint8)
    np.maximum.at(registers, slots, ranks)
    return registers


def hll_image(registers: np.ndarray) -> bytes:
    """The serialized image of an HLL_8 sketch (HLL mode, out of order) holding ``registers``."""
    inverse = np.exp2(-registers.astype(np.float64))
    head = struct.pack("<BBBBBBBBdddII", 10, 1, 7, HLL_LG_K, 0, _HLL_OUT_OF_ORDER, 0, _HLL_MODE_HLL_8,
                       0.0, float(inverse[registers < 32].sum()), float(inverse[registers >= 32].sum()),
                       int(np.count_nonzero(registers == 0)), 0)
    return head + registers.tobytes()


def frequent_items_image(keys: list[str], counts, total_weight: int, offset: int) -> bytes:
    """The serialized image of a frequent_strings_sketch(FREQ_LG_MAX_K) holding ``keys`` with ``counts``."""
    lg_cur = 3
    while 3 * (1 << lg_cur) // 4 < len(keys):
        lg_cur += 1
    head = struct.pack("<BBBBBBHIIqq", 4, 1, 10, FREQ_LG_MAX_K, lg_cur, 0, 0, len(keys), 0, total_weight, offset)
    encoded = [key.encode("utf-8", "surrogatepass") for key in keys]
    return b"".join([head, np.asarray(counts, dtype=np.int64).tobytes(),
                     *(struct.pack("<I", len(e)) + e for e in encoded)])


_HLL_OUT_OF_ORDER = 16  # flags byte: estimate with the composite estimator, not HIP
_HLL_MODE_HLL_8 = 2 | (2 << 2)  # current mode HLL, target type HLL_8


# --- one chunk ---------------------------------------------------------------------------------------

def profile_column(column: pa.ChunkedArray, exact_distinct_bound: int) -> dict:
    kind = kind_of(column.type)
    nulls = column.null_count
    part = {"type": kind, "arrow_type": str(column.type), "count": len(column) - nulls, "nulls": nulls}
    if kind in ("null", "other") or part["count"] == 0:
        return part
    valid = pc.drop_null(column)
    counts = pc.value_counts(valid)
    distinct, frequencies = counts.field("values"), counts.field("counts").to_numpy()
    part["chunk_distinct"] = len(distinct)  # this chunk's own distinct count (the Parquet copy's encoding)
    part["hll"] = _b64(hll_image(hll_registers(value_hashes(distinct, kind))))
    part["hll_hash"] = HLL_HASH
    values = _distinct_values(distinct, kind) if len(distinct) <= max(exact_distinct_bound, FREQ_KEPT) else None
    if len(distinct) <= FREQ_KEPT:
        kept, offset = values, 0
        kept_counts = frequencies
    else:
        order = np.argpartition(frequencies, len(frequencies) - FREQ_KEPT - 1)
        top, offset = order[-FREQ_KEPT:], int(frequencies[order[-FREQ_KEPT - 1]])  # the largest count dropped
        kept, kept_counts = _distinct_values(distinct.take(pa.array(top)), kind), frequencies[top]
    # Frequent items are keyed by str(value), as when the sketch was fed value by value.
    part["freq"] = _b64(frequent_items_image(kept if kind == "string" else list(map(str, kept)), kept_counts,
                                             part["count"], offset))
    part["exact"] = ([[v, n] for v, n in zip(values, frequencies.tolist())]
                     if len(distinct) <= exact_distinct_bound else None)

    if kind in ("integer", "float", "decimal"):
        minmax = pc.min_max(valid)
        if kind == "decimal":  # exact, as text (a JSON number would pass through a float and lose digits)
            low, high = minmax["min"].cast(pa.string()).as_py(), minmax["max"].cast(pa.string()).as_py()
        else:
            low, high = _finite(minmax["min"].as_py()), _finite(minmax["max"].as_py())
        floats = valid.cast(pa.float64()).to_numpy()  # mean, M2 and the KLL sketch: floating point for every number
        finite = floats[np.isfinite(floats)]
        part.update(min=low, max=high, n=int(finite.size),
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
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        try:
            columns[name] = profile_column(column, exact_distinct_bound)
        except (OverflowError, ValueError) as exc:  # e.g. a date or timestamp past year 9999 has no Python value
            raise DatasetInputError(f"column {name!r} ({column.type}) holds a value the profile cannot report: "
                                    f"{type(exc).__name__}: {exc}", column=name) from None
    return {"rows": table.num_rows, "columns": columns}


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

def _lower(a, b, key=None):
    return b if a is None else a if b is None else min(a, b, key=key)


def _upper(a, b, key=None):
    return b if a is None else a if b is None else max(a, b, key=key)


class ColumnAccumulator:
    def __init__(self, exact_distinct_bound: int):
        self.bound = exact_distinct_bound
        self.kind = self.arrow_type = None
        self.count = self.nulls = 0
        self.has_values = False
        self.exact: Counter | None = Counter()
        self.hll = ds.hll_union(HLL_LG_K)
        self.hll_hash = ()  # the hashing of the first part with values; every other part must match it
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
        if self.hll_hash == ():
            self.hll_hash = part.get("hll_hash")
        elif part.get("hll_hash") != self.hll_hash:  # two code versions profiled this import's chunks
            raise ValueError(f"the chunks' distinct-count sketches hash values differently ({self.hll_hash!r} and "
                             f"{part.get('hll_hash')!r}): the import ran on two versions of the code; import it again")
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
        key = Decimal if self.kind == "decimal" else None  # decimal min/max are text: compare them as numbers
        self.min, self.max = _lower(self.min, part.get("min"), key), _upper(self.max, part.get("max"), key)
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
            if self.count:  # a type that is counted, not profiled (kind "other": time, binary, duration, lists...)
                column.update(distinct=None, top_values=None, profiled=False)
            else:
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
        if self.kind in ("integer", "float", "decimal"):
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
