"""Bad input through the real worker: each gets a clear error on its dataset; nothing else is affected."""
from __future__ import annotations

import os

import pytest
from celery.result import AsyncResult

from apps.datasets import services
from apps.datasets.models import Status
from tests.datasets.conftest import settled, write_csv
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _broken_jsonl() -> bytes:
    return b'{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n{"a": 3, "b": \n{"a": 4, "b": "z"}\n'


# (file name, content or None for "do not create", options, expected message part, expected line, column)
CASES = [
    ("empty.csv", b"", {}, "is empty (0 bytes)", None, ""),
    ("header.csv", b"id,name,score\n", {}, "has a header (id, name, score) but no data rows", 1, ""),
    ("ragged.csv", b"a,b\n1,2\n3,4,5\n6,7\n", {}, "ragged row at line 3: expected 2 columns, got 3", 3, ""),
    ("invalid-utf8.csv", b"a,b\n" + b"1,x\n" * 30_000 + b"2,caf\xe9\n", {}, "invalid UTF-8 at line 30002", 30002, ""),
    ("any.csv", b"a,b\n1,2\n", {"encoding": "no-such-codec"}, "unknown encoding 'no-such-codec'", None, ""),
    ("binary.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4, {}, "looks like a binary file", None, ""),
    ("mixed.csv", b"x,y\n" + b"".join(b"%d,a\n" % i for i in range(2000)) + b"abc,b\n", {"chunk_bytes": 4096},
     "mixed types in column 'x' at line 2002", 2002, "x"),
    ("missing.csv", None, {}, "file not found", None, ""),
    ("blank.csv", b"\n\n\n", {}, "has zero columns", None, ""),
    ("empty-objects.jsonl", b"{}\n{}\n", {}, "has zero columns", None, ""),
    ("broken.jsonl", _broken_jsonl(), {}, "line 3 is not a valid JSON object", 3, ""),
]


def test_each_bad_input_fails_with_a_clear_error_and_the_worker_stays_up(cpu_worker, tmp_path):
    pid_before = cpu_worker.pid
    good_path = write_csv(tmp_path / "good.csv", 2_000)
    registered = []
    for name, content, options, *_ in CASES:
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        registered.append(services.register_dataset(str(path), options=options))
        if name == "ragged.csv":  # a good import in the middle of the bad ones
            good = services.register_dataset(str(good_path))

    for dataset, (name, _content, _options, message, line, column) in zip(registered, CASES):
        dataset = settled(dataset.pk)
        assert dataset.status == Status.FAILED, (name, dataset.status, dataset.error)
        assert message in dataset.error, (name, dataset.error)
        assert dataset.error_row == line, (name, dataset.error_row)
        assert dataset.error_column == column, (name, dataset.error_column)
        assert dataset.profile is None
        # The import's task id ends too (FAILURE, once any chunk still running has returned).
        wait_for(lambda: AsyncResult(dataset.task_id).state == "FAILURE", timeout=30, message=f"{name}: task FAILURE")

    good = settled(good.pk)
    assert good.status == Status.READY and good.row_count == 2_000
    assert cpu_worker.alive() and cpu_worker.pid == pid_before


def test_a_fifty_megabyte_line_is_refused_without_reading_it_whole(cpu_worker, tmp_path):
    path = tmp_path / "one-line.csv"
    with open(path, "wb") as f:
        f.write(b"a,b\n")
        f.write(b"x" * (50 * 1024 * 1024))
        f.write(b",1\n")
    dataset = settled(services.register_dataset(str(path)).pk)
    assert dataset.status == Status.FAILED
    assert "line 2 is longer than" in dataset.error and dataset.error_row == 2
    assert cpu_worker.alive()


def test_a_file_removed_during_the_import_fails_the_import(cpu_worker, tmp_path):
    path = write_csv(tmp_path / "vanishing.csv", 3_000)
    dataset = services.register_dataset(str(path), options={"chunk_bytes": 4096, "pause_per_chunk": 0.3})
    wait_for(lambda: type(dataset).objects.get(pk=dataset.pk).chunks_done >= 1, timeout=60, message="a chunk to finish")
    os.remove(path)
    dataset = settled(dataset.pk)
    assert dataset.status == Status.FAILED
    assert "was removed during the import" in dataset.error, dataset.error
    assert dataset.profile is None
