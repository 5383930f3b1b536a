import signal

from django.core.management.base import BaseCommand

from apps.control.recorder import Recorder


class Command(BaseCommand):
    help = "Record Celery task events into the task ledger (run one per deployment: compose/start/recorder)."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--flush-interval", type=float, default=0.25, help="seconds")

    def handle(self, *args, **options):
        from project.celery import app

        recorder = Recorder(app.conf.broker_url, options["batch_size"], options["flush_interval"])
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: recorder.stopping.set())
        self.stdout.write("recording task events into the ledger", ending="\n")
        self.stdout.flush()
        recorder.run()
