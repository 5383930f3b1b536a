"""Arrow types that are not JSON-native (Parquet input): decimals are profiled as numbers with exact text for
their values; dates and timestamps as ISO text; time, binary, duration and nested types are counted, not
profiled; a value the profile cannot report is a clear error on its dataset. Through the real broker and
a real prefork worker, since the partial profiles cross processes as JSON."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from apps.datasets import services
from apps.datasets.models import Status
from apps.datasets.pipeline import Limits, profile_in_process
from tests.datasets.conftest import settled

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 1_200  # 6 row groups of 200: several chunks, merged across the worker's two children


def _column(profile: dict, name: str) -> dict:
    return next(c for c in profile["columns"] if c["name"] == name)


def _price(i: int) -> Decimal | None:
    # Row groups hold 9.xx first and 10.xx..-3.xx later, so text order ("9.99" > "10.50") and number order
    # disagree across chunks: the merge must compare decimals as numbers.
    if i % 10 == 3:
        return None
    return Decimal(f"9.{i % 100:02d}") if i < 600 else Decimal(f"{i % 7 + 10}.50") if i % 2 else Decimal("-3.25")


def write_typed_parquet(path) -> None:
    base = dt.datetime(2024, 3, 1, 12, 0, 0)
    table = pa.table({
        "id": pa.array(range(ROWS), pa.int64()),
        "price": pa.array([_price(i) for i in range(ROWS)], pa.decimal128(10, 2)),
        # 38 digits: distinct values a float64 cannot tell apart
        "big": pa.array([Decimal(10 ** 30 + i % 400) for i in range(ROWS)], pa.decimal128(38, 0)),
        "day": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=i % 40) for i in range(ROWS)], pa.date32()),
        "at": pa.array([base + dt.timedelta(minutes=i) for i in range(ROWS)], pa.timestamp("us", tz="UTC")),
        "clock": pa.array([dt.time(i % 24, i % 60) for i in range(ROWS)], pa.time64("us")),
        "blob": pa.array([bytes([i % 256, 0, 255]) for i in range(ROWS)], pa.binary()),
        "took": pa.array([dt.timedelta(seconds=i) for i in range(ROWS)], pa.duration("s")),
        "tags": pa.array([[i, i + 1] for i in range(ROWS)], pa.list_(pa.int64())),
    })
    pq.write_table(table, path, row_group_size=200)


def check_typed_profile(profile: dict) -> None:
    assert profile["rows"] == ROWS and profile["chunks"] > 1
    prices = [p for p in map(_price, range(ROWS)) if p is not None]

    price = _column(profile, "price")
    assert price["type"] == "decimal" and price["arrow_type"] == "decimal128(10, 2)"
    assert (price["count"], price["nulls"]) == (len(prices), ROWS - len(prices))
    assert (price["min"], price["max"]) == ("-3.25", "16.50")  # exact text, compared as numbers across chunks
    assert price["distinct"] == {"value": len(set(prices)), "exact": True}
    assert price["top_values"]["values"][0] == ["-3.25", prices.count(Decimal("-3.25"))]
    assert all(isinstance(v, str) for v, _n in price["top_values"]["values"])
    assert price["mean"] == pytest.approx(float(sum(prices) / len(prices)))
    assert isinstance(price["stddev"], float)
    assert all(isinstance(v, float) for v in price["quantiles"]["values"].values())
    assert price["histogram"]["edges"][0] == -3.25 and price["histogram"]["edges"][-1] == 16.5

    big = _column(profile, "big")
    assert big["type"] == "decimal" and big["distinct"] == {"value": 400, "exact": True}
    assert (big["min"], big["max"]) == (str(10 ** 30), str(10 ** 30 + 399))

    day, at = _column(profile, "day"), _column(profile, "at")
    assert (day["type"], day["min"], day["max"]) == ("date", "2024-01-01", "2024-02-09")
    assert (at["type"], at["min"]) == ("timestamp", "2024-03-01T12:00:00+00:00")
    assert at["max"] == (dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone.utc)
                         + dt.timedelta(minutes=ROWS - 1)).isoformat()

    for name in ("clock", "blob", "took", "tags"):  # counted, not profiled; never "0 distinct values"
        other = _column(profile, name)
        assert other["type"] == "other" and other["count"] == ROWS and other["nulls"] == 0, name
        assert other["profiled"] is False and other["distinct"] is None and other["top_values"] is None, name


def test_decimal_and_other_arrow_types_through_the_worker(cpu_worker, tmp_path):
    path = tmp_path / "typed.parquet"
    write_typed_parquet(path)
    dataset = settled(services.register_dataset(str(path), options={"chunk_bytes": 4096}).pk)
    assert dataset.status == Status.READY, dataset.error
    assert dataset.row_count == ROWS
    check_typed_profile(dataset.profile)
    # The worker's profile is the one the same code computes in one process.
    reference = profile_in_process(str(path), tmp_path / "ref", Limits(chunk_bytes=4096))
    for mine, ref in zip(dataset.profile["columns"], reference["columns"]):
        for key in ("name", "type", "count", "nulls", "distinct", "top_values", "min", "max"):
            assert mine.get(key) == ref.get(key), (mine["name"], key)


def test_a_timestamp_past_year_9999_is_a_clear_error_and_the_worker_stays_up(cpu_worker, tmp_path):
    pid_before = cpu_worker.pid
    path = tmp_path / "far.parquet"
    far = pa.array([0, 10 ** 12], pa.int64()).cast(pa.timestamp("s"))  # 10**12 s is in year 33658
    pq.write_table(pa.table({"id": [1, 2], "when": far}), path)
    good = tmp_path / "good.parquet"
    write_typed_parquet(good)
    bad, fine = services.register_dataset(str(path)), services.register_dataset(str(good))
    bad = settled(bad.pk)
    assert bad.status == Status.FAILED and bad.profile is None
    assert "column 'when'" in bad.error and "holds a value the profile cannot report" in bad.error, bad.error
    assert bad.error_column == "when"
    assert settled(fine.pk).status == Status.READY
    assert cpu_worker.alive() and cpu_worker.pid == pid_before


def test_decimal_looking_csv_text_is_still_a_float_column(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("id,price\n" + "".join(f"{i},{i % 50}.10\n" for i in range(500)))
    price = _column(profile_in_process(str(path), tmp_path / "w", Limits()), "price")
    assert price["type"] == "float" and (price["min"], price["max"]) == (0.1, 49.1)
    assert isinstance(price["top_values"]["values"][0][0], float)
