"""Imports through the real broker and a real prefork worker: parallel chunks, merge, versions."""
from __future__ import annotations

import json

import pytest
from django_celery_results.models import TaskResult

from apps.datasets import pipeline, services
from apps.datasets.models import Dataset, Status
from tests.datasets.conftest import settled, write_csv

pytestmark = pytest.mark.django_db(transaction=True)


def test_chunks_run_in_parallel_children_and_merge_to_the_in_process_profile(cpu_worker, tmp_path):
    path = write_csv(tmp_path / "sales.csv", 20_000)
    dataset = services.register_dataset(str(path), options={"chunk_bytes": 64 * 1024, "pause_per_chunk": 0.1})
    dataset = settled(dataset.pk)
    assert dataset.status == Status.READY, dataset.error
    assert dataset.chunks_total >= 8

    # Every chunk ran in a prefork child of the worker, and both children took part.
    chunk_results = [json.loads(r.result) for r in TaskResult.objects.filter(task_id__in=dataset.chunk_task_ids)]
    assert len(chunk_results) == dataset.chunks_total
    pids = {r["pid"] for r in chunk_results}
    assert pids <= set(cpu_worker.children()) and len(pids) == 2

    # The merged profile equals the single-process run of the same code on the same file.
    reference = pipeline.profile_in_process(str(path), tmp_path / "ref", pipeline.Limits(chunk_bytes=64 * 1024))
    stored = dataset.profile
    assert stored["rows"] == reference["rows"] == 20_000
    assert dataset.row_count == 20_000 and dataset.rows_processed == 20_000
    for mine, ref in zip(stored["columns"], reference["columns"]):
        for key in ("name", "type", "count", "nulls", "distinct", "top_values", "min", "max"):
            assert mine.get(key) == ref.get(key), (mine["name"], key)
        if mine["type"] == "float":
            assert mine["mean"] == pytest.approx(ref["mean"]) and mine["stddev"] == pytest.approx(ref["stddev"])
    # And the finishing task's SUCCESS is what the demo and --wait follow.
    assert TaskResult.objects.get(task_id=dataset.task_id).status == "SUCCESS"


def test_reimport_makes_a_new_version_with_its_own_rows(cpu_worker, tmp_path):
    path = write_csv(tmp_path / "data.csv", 500)
    first = settled(services.register_dataset(str(path), name="versions").pk)
    write_csv(path, 800, seed=3)  # the file changed between the two imports
    second = settled(services.reimport(first).pk)
    assert (first.version, second.version) == (1, 2)
    assert (first.status, second.status) == (Status.READY, Status.READY)
    assert (first.row_count, second.row_count) == (500, 800)
    import pyarrow.parquet as pq

    assert pq.read_table(first.profile["parquet"]).num_rows == 500
    assert pq.read_table(second.profile["parquet"]).num_rows == 800
    assert Dataset.objects.filter(name="versions").count() == 2
