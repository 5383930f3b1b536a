"""What a chunk costs outside the sketches: the scan's counts in numpy, ASCII taken as UTF-8 without
decoding, and a Parquet copy that dictionary-encodes only the columns that repeat."""
from __future__ import annotations

import json

import pyarrow.parquet as pq

from apps.datasets.pipeline import Limits, profile_in_process


def test_a_quoted_value_across_scan_blocks_without_quotes_is_never_split(tmp_path):
    """Blocks are max_line_bytes long: a quoted value of many short lines spans blocks that hold no quote
    at all, and no chunk may start inside it."""
    note = "\n".join(f"line {i}" for i in range(40))
    path = tmp_path / "notes.csv"
    path.write_text("id,note\n" + "".join(f'{i},"{note}"\n' for i in range(60)))
    profile = profile_in_process(str(path), tmp_path / "w", Limits(chunk_bytes=300, max_line_bytes=64))
    assert profile["chunks"] > 5 and profile["rows"] == 60
    notes = next(c for c in profile["columns"] if c["name"] == "note")
    assert notes["distinct"] == {"value": 1, "exact": True} and notes["nulls"] == 0


def test_the_parquet_copy_dictionary_encodes_only_repetitive_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,cat\n" + "".join(f"{i},{'xyz'[i % 3]}\n" for i in range(5_000)))
    profile = profile_in_process(str(path), tmp_path / "w", Limits())
    metadata = pq.ParquetFile(next((tmp_path / "w" / "parquet").glob("*.parquet"))).metadata
    encodings = {metadata.schema.column(i).name: metadata.row_group(0).column(i).encodings for i in range(2)}
    assert "RLE_DICTIONARY" in encodings["cat"] and "RLE_DICTIONARY" not in encodings["id"]
    assert pq.read_table(profile["parquet"]).num_rows == 5_000
    json.dumps(profile, allow_nan=False)


def test_invalid_utf8_after_ascii_is_still_found_with_its_line(tmp_path):
    """The ASCII fast path must not let a non-ASCII chunk through undecoded."""
    import pytest

    from apps.datasets.source import DatasetInputError

    path = tmp_path / "bad.csv"
    path.write_bytes(b"a,b\n" + b"1,x\n" * 20000 + b"2,caf\xe9\n" + b"3,y\n" * 10)
    with pytest.raises(DatasetInputError, match="invalid UTF-8 at line 20002") as error:
        profile_in_process(str(path), tmp_path / "w", Limits(chunk_bytes=4096))
    assert error.value.row == 20002
