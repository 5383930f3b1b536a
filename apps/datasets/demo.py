"""Demo work for `manage.py demo` (registered in apps.py): a probe, and the import of a small generated CSV
(a few chunks, so the chord runs)."""
from __future__ import annotations

import csv
import random

from apps.datasets import services
from apps.datasets.tasks import probe


def enqueue_demo_import(i: int) -> str:
    """Write a 2,000-row CSV and import it; returns the task id whose SUCCESS means the import finished."""
    directory = services.datasets_root() / "demo"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"demo-{i}.csv"
    rng = random.Random(i)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["order_id", "customer", "amount", "ordered_on"])
        for n in range(2_000):
            out.writerow([n, f"c{rng.randrange(50)}", f"{rng.lognormvariate(3, 1):.2f}",
                          f"2025-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"])
    dataset = services.register_dataset(str(path), name="demo-orders", options={"chunk_bytes": 32 * 1024})
    return dataset.task_id


def enqueue_probe(i: int) -> str:
    return probe.delay().id
