"""The sketches a chunk builds from arrays (profiling.hll_image, frequent_items_image) against datasketches'
own: same format, same estimator, mergeable across chunks, and accurate on known data."""
from __future__ import annotations

import datetime

import datasketches as ds
import numpy as np
import pyarrow as pa
import pytest

from apps.datasets import profiling


def estimate(part: dict) -> ds.hll_sketch:
    return ds.hll_sketch.deserialize(profiling._unb64(part["hll"]))


def test_an_hll_image_is_read_by_datasketches_as_the_sketch_with_those_registers():
    """Registers taken from a real HLL_8 sketch, written back by hll_image: datasketches gives the same
    composite estimate and bounds as for the real sketch (flagged out of order, as any union result is)."""
    real = ds.hll_sketch(profiling.HLL_LG_K, ds.tgt_hll_type.HLL_8)
    for i in range(50_000):
        real.update(i)
    image = bytearray(real.serialize_updatable())
    registers = np.frombuffer(bytes(image[40:40 + profiling.HLL_K]), dtype=np.uint8)
    image[5] |= 16  # out of order: the composite estimator
    real = ds.hll_sketch.deserialize(bytes(image))
    mine = ds.hll_sketch.deserialize(profiling.hll_image(registers))
    assert mine.get_estimate() == real.get_estimate()
    assert (mine.get_lower_bound(2), mine.get_upper_bound(2)) == (real.get_lower_bound(2), real.get_upper_bound(2))
    assert mine.lg_config_k == profiling.HLL_LG_K


@pytest.mark.parametrize("kind, make", [
    ("integer", lambda lo, hi: pa.array(np.arange(lo, hi, dtype=np.int64))),
    ("float", lambda lo, hi: pa.array(np.arange(lo, hi, dtype=np.float64) / 7)),
    ("string", lambda lo, hi: pa.array([f"value {i}" for i in range(lo, hi)])),
    ("date", lambda lo, hi: pa.array(np.arange(lo, hi, dtype=np.int32)).cast(pa.date32())),
])
def test_hll_from_arrays_is_accurate_and_merges_across_chunks_like_one_sketch(kind, make):
    """Overlapping chunks merged with hll_union give exactly the estimate of one sketch over all values
    (registers merge by max), and the estimate is within the sketch's error at several sizes."""
    for n in (50, 3_000, 40_000, 300_000):
        whole = profiling.hll_registers(profiling.value_hashes(make(0, n), kind))
        union = ds.hll_union(profiling.HLL_LG_K)
        step = max(1, n // 4)
        for lo in range(0, n, step):  # four chunks, each overlapping the next by half a chunk
            chunk = make(lo, min(n, lo + step + step // 2))
            union.update(ds.hll_sketch.deserialize(profiling.hll_image(
                profiling.hll_registers(profiling.value_hashes(chunk, kind)))))
        one = ds.hll_sketch.deserialize(profiling.hll_image(whole))
        assert union.get_result().get_estimate() == pytest.approx(one.get_estimate(), rel=1e-9)
        assert abs(one.get_estimate() - n) <= max(2, 0.05 * n), (kind, n, one.get_estimate())


def test_hll_accuracy_over_many_sets_matches_the_sketch_error():
    """lg_k 12: relative standard error about 1.6 %; the 2-sigma bounds hold the truth about 95 % of the time."""
    errors, inside = [], 0
    for seed in range(40):
        n = 100_000
        values = pa.array(np.arange(seed * 10**7, seed * 10**7 + n, dtype=np.int64))
        sketch = ds.hll_sketch.deserialize(profiling.hll_image(
            profiling.hll_registers(profiling.value_hashes(values, "integer"))))
        errors.append(sketch.get_estimate() / n - 1)
        inside += sketch.get_lower_bound(2) <= n <= sketch.get_upper_bound(2)
    assert abs(np.mean(errors)) < 0.01 and np.std(errors) < 0.025
    assert inside >= 34


def test_value_hashes_are_the_same_for_the_same_value_in_any_chunk():
    for kind, values in (("integer", [5, 7, 5]), ("string", ["a", "b", "a"]), ("float", [0.5, 1.5, 0.5]),
                         ("boolean", [True, False, True]),
                         ("date", [datetime.date(2024, 1, 1), datetime.date(2024, 1, 2), datetime.date(2024, 1, 1)])):
        hashes = profiling.value_hashes(pa.array(values), kind)
        assert hashes[0] == hashes[2] != hashes[1], kind
        assert profiling.value_hashes(pa.array(values[:1]), kind)[0] == hashes[0], kind


def test_a_frequent_items_image_is_the_sketch_datasketches_would_hold():
    keys, counts = [f"k{i}" for i in range(300)], [i + 1 for i in range(300)]
    real = ds.frequent_strings_sketch(profiling.FREQ_LG_MAX_K)
    for key, count in zip(keys, counts):
        real.update(key, count)
    mine = ds.frequent_strings_sketch.deserialize(profiling.frequent_items_image(keys, counts, sum(counts), 0))
    assert (mine.total_weight, mine.num_active_items, mine.epsilon) == (real.total_weight, 300, real.epsilon)
    no_fp = ds.frequent_items_error_type.NO_FALSE_POSITIVES
    assert mine.get_frequent_items(no_fp) == real.get_frequent_items(no_fp)
    small = ds.frequent_strings_sketch(profiling.FREQ_LG_MAX_K)
    small.update("ab", 5)
    small.update("xyz", 2)
    assert profiling.frequent_items_image(["ab", "xyz"], [5, 2], 7, 0) == small.serialize()  # byte for byte


def test_frequent_items_beyond_the_sketch_capacity_keep_the_heavy_values_within_the_stated_error():
    """100,000 values, 60,000 distinct: three heavy values; the top values and counts stay within the
    sketch's bounds after a merge of chunks, and the reported max_error holds."""
    rng = np.random.default_rng(3)
    heavy = {"7": 4_000, "8": 2_500, "9": 1_500}
    rows = np.concatenate([np.full(n, int(v)) for v, n in heavy.items()] + [rng.integers(100, 10**9, 92_000)])
    rng.shuffle(rows)
    accumulator = profiling.ColumnAccumulator(exact_distinct_bound=1_000)
    for chunk in np.array_split(rows, 5):
        part = profiling.profile_column(pa.chunked_array([pa.array(chunk)]), 1_000)
        assert part["exact"] is None and part["chunk_distinct"] > profiling.FREQ_KEPT
        sketch = ds.frequent_strings_sketch.deserialize(profiling._unb64(part["freq"]))
        assert sketch.num_active_items == profiling.FREQ_KEPT and sketch.total_weight == len(chunk)
        for value, n in heavy.items():  # the sketch's invariant: lower bound <= true count <= upper bound
            true = int(np.count_nonzero(chunk == int(value)))
            assert sketch.get_lower_bound(value) <= true <= sketch.get_upper_bound(value)
        assert sketch.get_upper_bound(value) - sketch.get_lower_bound(value) <= len(chunk) // (profiling.FREQ_KEPT + 1)
        accumulator.add(part)
    column = accumulator.result()
    assert column["top_values"]["exact"] is False and column["top_values"]["method"] == "frequent items sketch"
    top = dict(column["top_values"]["values"][:3])
    assert set(top) == set(heavy)
    for value, n in heavy.items():
        assert n <= top[value] <= n + column["top_values"]["max_error"]
    assert column["distinct"]["lower_bound"] <= len(np.unique(rows)) <= column["distinct"]["upper_bound"]


def test_partials_hashed_two_ways_are_refused_by_the_merge():
    part = profiling.profile_column(pa.chunked_array([pa.array([1, 2, 3])]), 10)
    accumulator = profiling.ColumnAccumulator(10)
    accumulator.add(part)
    with pytest.raises(ValueError, match="hash values differently"):
        accumulator.add({**part, "hll_hash": None})  # a partial from the code before array-built sketches
