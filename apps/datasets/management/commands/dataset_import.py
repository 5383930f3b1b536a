"""manage.py dataset_import PATH [--name NAME] [--wait] [--json]: register a file and enqueue its profiling."""
from __future__ import annotations

import json
import sys
import time

from django.core.management.base import CommandError

from apps.core.broker import BrokerUnavailable, check_broker
from apps.core.commands import PublishingCommand
from apps.datasets import selectors, services
from apps.datasets.models import Dataset, Status


class Command(PublishingCommand):
    help = "Import a CSV/TSV/JSON Lines/Parquet file as a new dataset version and profile it on the dataset queue."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--name", help="dataset name (default: the file name without extension)")
        parser.add_argument("--wait", action="store_true", help="show progress until done; exit 1 unless READY")
        parser.add_argument("--json", action="store_true", help="print the stored profile as JSON (implies --wait)")
        parser.add_argument("--chunk-bytes", type=int, help="source bytes per chunk task (default DATASETS_CHUNK_BYTES)")
        parser.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits before giving up")

    def handle(self, *args, path, name, wait, json: bool, chunk_bytes, timeout, **options):
        as_json = json
        try:
            services.validate_options({"chunk_bytes": chunk_bytes} if chunk_bytes else None)
            check_broker()  # one clear line instead of a traceback when RabbitMQ is down
        except (ValueError, BrokerUnavailable) as exc:
            raise CommandError(str(exc)) from None
        try:
            dataset = services.register_dataset(path, name=name,
                                                options={"chunk_bytes": chunk_bytes} if chunk_bytes else None)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"dataset {dataset.name} v{dataset.version} (id {dataset.pk}) queued, task {dataset.task_id}")
        if not (wait or as_json):
            return
        dataset = self._follow(dataset.pk, timeout)
        if dataset.status != Status.READY:
            where = f" (line {dataset.error_row})" if dataset.error_row else ""
            where += f" (column {dataset.error_column})" if dataset.error_column else ""
            raise CommandError(f"dataset {dataset.pk} {dataset.status}: {dataset.error}{where}")
        if as_json:
            self.stdout.write(_json_dumps(dataset.profile))
        else:
            self.stdout.write(f"READY: {dataset.row_count} rows x {dataset.column_count} columns "
                              f"in {dataset.profile.get('elapsed_seconds')} s")

    def _follow(self, dataset_id: int, timeout: float) -> Dataset:
        deadline = time.monotonic() + timeout
        interactive = sys.stderr.isatty()
        last = None
        while True:
            dataset = Dataset.objects.get(pk=dataset_id)
            line = _progress_line(selectors.progress(dataset))
            if line != last:
                self.stderr.write(("\r" if interactive else "") + line, ending="" if interactive else "\n")
                last = line
            if not dataset.is_active:
                if interactive:
                    self.stderr.write("")
                return dataset
            if time.monotonic() > deadline:
                raise CommandError(f"dataset {dataset_id} still {dataset.status} after {timeout:g} s; "
                                   "is a cpu worker (compose/start/cpu) running?")
            time.sleep(0.5)


def _progress_line(progress: dict) -> str:
    percent = progress["percent"] or 0
    bar = "#" * (percent // 5) + "." * (20 - percent // 5)
    total = progress["rows_total"] if progress["rows_total"] is not None else "?"
    return (f"[{bar}] {percent:3d}% {progress['stage']:<10} rows {progress['rows_processed']}/{total} "
            f"chunks {progress['chunks_done']}/{progress['chunks_total']}")


def _json_dumps(value) -> str:
    return json.dumps(value, indent=2)
