"""The import pipeline as plain functions over files: plan, one chunk, merge. No database, no Celery.

The Celery tasks (tasks.py via services.py) run these steps in prefork children; ``profile_in_process``
runs the very same steps in one process (the benchmark's baseline, and the unit tests).
Everything a run writes lives in its own directory, so two versions of a dataset never share a file.
"""
from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from apps.datasets import profiling
from apps.datasets.source import Chunk, Plan, ensure_unchanged, inspect_source, parse_chunk


@dataclass(frozen=True)
class Limits:
    chunk_bytes: int = 8 * 1024 * 1024  # bytes of source text per chunk task (bounds a child's memory)
    max_line_bytes: int = 16 * 1024 * 1024  # a longer line is an error, not a memory spike
    exact_distinct_bound: int = 10_000  # distinct counts and top values are exact up to this many values
    hash_group_bytes: int = 32 * 1024 * 1024  # row hashes the merge holds in memory at once
    chunk_multiple: int = 2  # chunk count is a multiple of this (the cpu workers' children) past one chunk


def use_one_core_per_process() -> None:
    """Pin pyarrow's and polars' thread pools to one thread, and load them now.

    Parallelism comes from prefork children (one chunk each); library threads on top would only
    oversubscribe the cores and make a child's time depend on its neighbours. Called in every worker
    child at start (tasks.py) and by the benchmark's in-process baseline, so both run the same way.
    """
    os.environ["POLARS_MAX_THREADS"] = "1"
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    import polars  # noqa: F401  (first import costs ~0.3 s: pay it before the first chunk)


def parquet_dir(workdir: Path) -> Path:
    return workdir / "parquet"


def scratch_dir(workdir: Path) -> Path:
    return workdir / "scratch"


def plan_import(path: str, workdir: Path, limits: Limits, encoding: str | None = None) -> Plan:
    remove_workdir(workdir)  # a redelivered scan starts clean: no part of an earlier attempt survives
    scratch_dir(workdir).mkdir(parents=True, exist_ok=True)
    parquet_dir(workdir).mkdir(parents=True, exist_ok=True)
    plan = inspect_source(path, scratch_dir(workdir), limits.chunk_bytes, limits.max_line_bytes, encoding,
                          limits.chunk_multiple)
    plan.hash_groups = max(1, math.ceil(plan.data_rows_estimate * 8 / limits.hash_group_bytes))
    return plan


def _partial_path(workdir: Path, index: int) -> Path:
    return scratch_dir(workdir) / f"profile-{index:05d}.json"


def _hash_path(workdir: Path, group: int, index: int) -> Path:
    return scratch_dir(workdir) / f"hashes-g{group:03d}-c{index:05d}.npy"


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def process_chunk(plan: Plan, chunk: Chunk, workdir: Path, limits: Limits) -> dict:
    """Parse one chunk, keep its columnar copy, write its partial profile and row hashes; return a summary."""
    started, cpu_started = time.monotonic(), time.process_time()
    what = f"chunk {chunk.index} at line {chunk.first_line}"
    # A redelivered chunk (its worker was cut off after it ran) finds its partial profile: it is rewritten
    # the same, and the caller must not count the chunk's rows a second time.
    done_before = _partial_path(workdir, chunk.index).exists()
    ensure_unchanged(plan, what)
    table = parse_chunk(plan, chunk, plan.schema)
    ensure_unchanged(plan, what)  # what was read is what the scan saw
    part = profiling.profile_table(table, limits.exact_distinct_bound)
    pq.write_table(table, parquet_dir(workdir) / f"part-{chunk.index:05d}.parquet",
                   use_dictionary=dictionary_columns(part))
    hashes = profiling.row_hashes(table)
    groups = hashes % np.uint64(plan.hash_groups)
    for group in range(plan.hash_groups):
        np.save(_hash_path(workdir, group, chunk.index), hashes[groups == group])
    _partial_path(workdir, chunk.index).write_text(json.dumps(part))
    return {"index": chunk.index, "rows": table.num_rows, "peak_rss_kib": peak_rss_kib(), "done_before": done_before,
            "seconds": round(time.monotonic() - started, 3), "arrow_threads": pa.cpu_count(),
            "cpu_seconds": round(time.process_time() - cpu_started, 3)}


def dictionary_columns(part: dict) -> list[str]:
    """Columns of the chunk's Parquet copy worth dictionary encoding: at most a quarter of their values
    distinct in the chunk. Beyond that pyarrow's default (dictionary first, plain once the dictionary page
    is full) spent a third of the write on dictionaries it then dropped (36 -> 27 ms per 100,000 rows of
    the benchmark's file, 2.3 -> 2.1 MB)."""
    return [name for name, column in part["columns"].items()
            if column.get("chunk_distinct", column["count"]) * 4 <= max(column["count"], 1)]


def merge_chunks(plan: Plan, workdir: Path, limits: Limits, meta: dict) -> dict:
    """One profile from every chunk's partial profile and row hashes; scratch files are removed after."""
    parts = (json.loads(_partial_path(workdir, chunk.index).read_text()) for chunk in plan.chunks)  # one at a time
    hash_groups = ([np.load(_hash_path(workdir, group, chunk.index), mmap_mode="r") for chunk in plan.chunks]
                   for group in range(plan.hash_groups))
    duplicates = profiling.duplicate_count(hash_groups)
    profile = profiling.merge_profiles(parts, duplicates, limits.exact_distinct_bound, {
        "source": {"format": plan.format, "encoding": plan.encoding, "delimiter": plan.delimiter,
                   "has_header": plan.has_header, "bytes": plan.size, "lines": plan.lines},
        "chunks": len(plan.chunks),
        "parquet": str(parquet_dir(workdir)),
        **meta,
    })
    profile["peak_rss_kib"] = max(profile.get("peak_rss_kib", 0), peak_rss_kib())  # the merging process too
    for path in scratch_dir(workdir).glob("profile-*.json"):
        path.unlink()
    for path in scratch_dir(workdir).glob("hashes-*.npy"):
        path.unlink()
    return profile


def profile_in_process(path: str, workdir: Path, limits: Limits = Limits()) -> dict:
    """The whole pipeline in this process, chunk after chunk: the same code the workers run."""
    plan = plan_import(path, workdir, limits)
    results = [process_chunk(plan, chunk, workdir, limits) for chunk in plan.chunks]
    return merge_chunks(plan, workdir, limits, {"peak_rss_kib": max(r["peak_rss_kib"] for r in results)})


def remove_workdir(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
