import sys
import time

from django.core.management.base import CommandError

from apps.core.broker import BrokerUnavailable, check_broker
from apps.core.commands import PublishingCommand
from apps.core.demo import demo_progress, enqueue_demo


class Command(PublishingCommand):
    help = "Enqueue a mixed workload on every queue, show progress, and report per queue: done, failed, time."

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=20, help="units of each registered job (default 20)")
        parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for completion")

    def handle(self, *args, **options):
        if options["count"] < 1:
            raise CommandError("--count must be at least 1")
        try:
            check_broker()
        except BrokerUnavailable as exc:
            raise CommandError(str(exc)) from exc

        started = time.monotonic()
        ids = enqueue_demo(options["count"])
        total = sum(len(v) for v in ids.values())
        self.stdout.write(f"enqueued {total} tasks on {', '.join(ids)}")

        finished_at: dict[str, float] = {}
        deadline = started + options["timeout"]
        while True:
            progress = demo_progress(ids)
            now = time.monotonic()
            for queue, p in progress.items():
                if p["pending"] == 0:
                    finished_at.setdefault(queue, now - started)
            settled = sum(p["done"] + p["failed"] for p in progress.values())
            if sys.stdout.isatty():
                self.stdout.write(f"\r{self._bar(settled, total)} {settled}/{total}", ending="")
            if settled == total or now > deadline:
                break
            time.sleep(0.25)
        if sys.stdout.isatty():
            self.stdout.write("")

        self.stdout.write(f"{'queue':<12} {'done':>6} {'failed':>6} {'pending':>7} {'time':>8}")
        for queue, p in progress.items():
            took = f"{finished_at[queue]:.2f}s" if queue in finished_at else "-"
            self.stdout.write(f"{queue:<12} {p['done']:>6} {p['failed']:>6} {p['pending']:>7} {took:>8}")
        failed = sum(p["failed"] for p in progress.values())
        pending = sum(p["pending"] for p in progress.values())
        if pending:
            raise CommandError(f"{pending} tasks still pending after {options['timeout']}s: are the workers up? "
                               "(python manage.py health)")
        if failed:
            raise CommandError(f"{failed} tasks failed: see the admin's task results")
        self.stdout.write(self.style.SUCCESS(f"all {total} tasks done in {time.monotonic() - started:.2f}s"))

    @staticmethod
    def _bar(done, total, width=30):
        filled = int(width * done / total) if total else width
        return "[" + "#" * filled + "." * (width - filled) + "]"
