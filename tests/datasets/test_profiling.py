"""The profiling service in-process, against files whose statistics are known exactly."""
from __future__ import annotations

import json
import statistics

import pyarrow.parquet as pq
import pytest

from apps.datasets.pipeline import Limits, profile_in_process
from apps.datasets.source import DatasetInputError


def column(profile, name):
    return next(c for c in profile["columns"] if c["name"] == name)


@pytest.fixture
def known_csv(tmp_path):
    """x = 1..1000; cat cycles a,b,c,d; half of `maybe` empty; day = 2024-01-01 + i%31; rows 0..9 repeated."""
    lines = ["x,cat,maybe,day,ok"]
    for i in range(1, 1001):
        lines.append(f"{i},{'abcd'[i % 4]},{i if i % 2 else ''},2024-01-{i % 31 + 1:02d},{'true' if i % 5 else 'false'}")
    lines += lines[1:11]  # ten duplicate rows at the end, far from their originals
    path = tmp_path / "known.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("chunk_bytes", [1024, 8 * 1024 * 1024])
def test_statistics_are_exact_where_promised_whatever_the_chunking(known_csv, tmp_path, chunk_bytes):
    profile = profile_in_process(str(known_csv), tmp_path / "w", Limits(chunk_bytes=chunk_bytes))
    xs = list(range(1, 1001)) + list(range(1, 11))
    assert profile["rows"] == 1010 and profile["columns_count"] == 5
    assert profile["duplicate_rows"] == {"value": 10, "exact": True, "method": "64-bit row hashes compared across all chunks"}
    assert profile["chunks"] == (1 if chunk_bytes > 1024 else profile["chunks"]) and profile["chunks"] >= 1

    x = column(profile, "x")
    assert x["type"] == "integer" and (x["min"], x["max"]) == (1, 1000)
    assert x["count"] == 1010 and x["nulls"] == 0
    assert x["mean"] == pytest.approx(statistics.mean(xs)) and x["stddev"] == pytest.approx(statistics.stdev(xs))
    assert x["distinct"] == {"value": 1000, "exact": True}
    assert x["quantiles"]["exact"] is False and abs(x["quantiles"]["values"]["p50"] - 500) <= 20
    assert sum(x["histogram"]["counts"]) == pytest.approx(1010, abs=20)

    cat = column(profile, "cat")
    assert cat["type"] == "string" and cat["distinct"] == {"value": 4, "exact": True}
    assert dict(map(tuple, cat["top_values"]["values"])) == {"a": 252, "b": 253, "c": 253, "d": 252}

    maybe = column(profile, "maybe")
    assert maybe["nulls"] == 505 and maybe["count"] == 505 and maybe["null_fraction"] == pytest.approx(0.5)

    day = column(profile, "day")
    assert day["type"] == "date" and (day["min"], day["max"]) == ("2024-01-01", "2024-01-31")

    ok = column(profile, "ok")
    assert ok["type"] == "boolean" and (ok["true"], ok["false"]) == (808, 202)
    assert pq.read_table(profile["parquet"]).num_rows == 1010
    json.dumps(profile, allow_nan=False)  # storable as strict JSON (PostgreSQL jsonb)


def test_distinct_beyond_the_bound_is_an_estimate_and_says_so(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("id,v\n" + "".join(f"{i},{i % 7}\n" for i in range(20_000)))
    profile = profile_in_process(str(path), tmp_path / "w", Limits(chunk_bytes=16 * 1024, exact_distinct_bound=1000))
    ident = column(profile, "id")
    assert ident["distinct"]["exact"] is False and ident["distinct"]["method"] == "HLL sketch"
    assert ident["distinct"]["lower_bound"] <= 20_000 <= ident["distinct"]["upper_bound"]
    assert abs(ident["distinct"]["value"] - 20_000) < 20_000 * 0.05
    assert ident["top_values"]["exact"] is False
    assert column(profile, "v")["distinct"] == {"value": 7, "exact": True}


def test_duplicates_are_exact_when_row_hashes_are_split_into_groups(known_csv, tmp_path):
    profile = profile_in_process(str(known_csv), tmp_path / "w", Limits(chunk_bytes=1024, hash_group_bytes=512))
    assert profile["duplicate_rows"]["value"] == 10


def test_tsv_and_json_lines_give_the_same_statistics_as_csv(tmp_path):
    rows = [(i, f"n{i % 3}", i * 0.25) for i in range(500)]
    (tmp_path / "d.csv").write_text("a,b,c\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    (tmp_path / "d.tsv").write_text("a\tb\tc\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"a": a, "b": b, "c": c}) + "\n" for a, b, c in rows))
    profiles = [profile_in_process(str(tmp_path / name), tmp_path / f"w-{name}", Limits(chunk_bytes=2048))
                for name in ("d.csv", "d.tsv", "d.jsonl")]
    for key in ("type", "count", "distinct", "min", "max", "mean", "top_values"):
        assert len({json.dumps([column(p, n).get(key) for n in "abc"]) for p in profiles}) == 1, key
    assert [p["source"]["format"] for p in profiles] == ["csv", "csv", "jsonl"]
    assert profiles[1]["source"]["delimiter"] == "\t"


def test_quoted_line_breaks_never_split_a_row_between_chunks(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("id,note\n" + "".join(f'{i},"first line\nsecond line, with comma"\n' for i in range(2000)))
    profile = profile_in_process(str(path), tmp_path / "w", Limits(chunk_bytes=1024))
    assert profile["chunks"] > 10
    assert profile["rows"] == 2000 and column(profile, "id")["max"] == 1999
    assert column(profile, "note")["distinct"] == {"value": 1, "exact": True}


def test_a_legacy_encoding_is_detected_and_transcoded(tmp_path):
    path = tmp_path / "cities.csv"
    path.write_bytes("name,city\n".encode() + "José,Zürich\nRené,Besançon\nAnaïs,Orléans\n".encode("cp1252") * 50)
    profile = profile_in_process(str(path), tmp_path / "w", Limits())
    assert profile["source"]["encoding"] != "utf-8"
    assert {v for v, _n in column(profile, "city")["top_values"]["values"]} == {"Zürich", "Besançon", "Orléans"}


def test_bad_input_raises_a_located_error(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n" + "1,2\n" * 500 + "1,2,3\n")
    with pytest.raises(DatasetInputError) as error:
        profile_in_process(str(path), tmp_path / "w", Limits(chunk_bytes=1024))
    assert error.value.row == 502 and "expected 2 columns, got 3" in error.value.message


def test_parquet_input_is_profiled_row_group_by_row_group(tmp_path):
    import pyarrow as pa

    rows = [(i, f"n{i % 3}", i * 0.25) for i in range(5000)]
    (tmp_path / "d.csv").write_text("a,b,c\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    table = pa.table({"a": [r[0] for r in rows], "b": [r[1] for r in rows], "c": [r[2] for r in rows]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=500)
    csv_profile = profile_in_process(str(tmp_path / "d.csv"), tmp_path / "w1", Limits())
    parquet_profile = profile_in_process(str(tmp_path / "d.parquet"), tmp_path / "w2", Limits(chunk_bytes=4096))
    assert parquet_profile["source"]["format"] == "parquet" and parquet_profile["chunks"] > 1
    assert parquet_profile["rows"] == 5000
    for key in ("type", "count", "distinct", "min", "max", "mean", "top_values"):
        assert [column(parquet_profile, n).get(key) for n in "abc"] == [column(csv_profile, n).get(key) for n in "abc"], key


def test_a_corrupt_parquet_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1" + b"\x00garbage" * 100)
    with pytest.raises(DatasetInputError, match="is not a valid Parquet file"):
        profile_in_process(str(path), tmp_path / "w", Limits())


def test_a_chunk_processed_again_says_so_and_the_profile_is_unchanged(known_csv, tmp_path):
    """A redelivered chunk (its worker was cut off after it ran) is processed again: the caller must not
    count its rows twice (services.profile_chunk reads ``done_before``), and the merge sees one copy."""
    from apps.datasets import pipeline

    limits = Limits(chunk_bytes=1024)
    reference = profile_in_process(str(known_csv), tmp_path / "ref", limits)
    workdir = tmp_path / "w"
    plan = pipeline.plan_import(str(known_csv), workdir, limits)
    first = [pipeline.process_chunk(plan, chunk, workdir, limits) for chunk in plan.chunks]
    again = pipeline.process_chunk(plan, plan.chunks[0], workdir, limits)
    assert not any(result["done_before"] for result in first) and again["done_before"]
    profile = pipeline.merge_chunks(plan, workdir, limits, {"peak_rss_kib": 0})
    assert profile["rows"] == reference["rows"] == 1010
    assert profile["duplicate_rows"] == reference["duplicate_rows"]
