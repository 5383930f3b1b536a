"""The benchmark runs end to end at a tiny size (figures come from real runs: docs/datasets.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.workers import ROOT


@pytest.mark.slow
def test_benchmark_runs_at_a_tiny_size(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'bench.sqlite3'}",
           "DATASETS_ROOT": str(tmp_path / "datasets")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    run = subprocess.run([sys.executable, "bench/datasets_profile.py", "--rows", "3000", "--repeat", "1",
                          "--chunk-bytes", "16384"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["in_process"]["rows"] == 3000
    for children in (1, 2):
        result = report[f"end_to_end_{children}_children"]
        assert result["rows"] == 3000 and result["chunks"] >= 2 and result["peak_child_rss_mib_getrusage"] > 0
    assert report["ratio_2_vs_1_children"] > 0 and report["ratio_end_to_end_1_children_vs_in_process"] > 0
    assert report["duckdb_summarize_2_threads"]["columns"] == report["polars_describe_n_unique"]["columns"] == 10
    assert report["time_end_to_end_2_children_vs_duckdb_summarize"] > 0
