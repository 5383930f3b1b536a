import time

from aiosmtpd.controller import Controller
from django.core.management.base import BaseCommand

from apps.mail.sink import MailboxHandler, mailbox_dir


class Command(BaseCommand):
    help = "Run a local SMTP sink that stores every message under var/mailbox/ (development only)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=1025)

    def handle(self, *args, **options):
        controller = Controller(MailboxHandler(), hostname=options["host"], port=options["port"])
        controller.start()
        self.stdout.write(f"SMTP sink on {options['host']}:{options['port']}, storing to {mailbox_dir()}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            controller.stop()
