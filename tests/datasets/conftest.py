"""Helpers for dataset tests: files with known content, and following an import to its end."""
from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from apps.datasets.models import Dataset
from tests.support.workers import wait_for


def write_csv(path: Path, rows: int, seed: int = 7) -> Path:
    """id (unique int), group (5 values), amount (float, some empty), day (date), flag (bool)."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "group", "amount", "day", "flag"])
        for i in range(rows):
            amount = "" if i % 10 == 3 else f"{rng.uniform(0, 1000):.3f}"
            out.writerow([i, f"g{i % 5}", amount, f"2024-{i % 12 + 1:02d}-{i % 28 + 1:02d}", "true" if i % 3 else "false"])
    return path


def settled(dataset_id: int, timeout: float = 120) -> Dataset:
    """Wait until the import leaves QUEUED/RUNNING; return the fresh row."""
    return wait_for(lambda: (d := Dataset.objects.get(pk=dataset_id)) and not d.is_active and d,
                    timeout=timeout, interval=0.3, message=f"dataset {dataset_id} to settle")


@pytest.fixture(autouse=True)
def datasets_root(settings, tmp_path_factory):
    """Workers write under DATASETS_ROOT from their own settings; keep the test process consistent."""
    return Path(settings.DATASETS_ROOT)
