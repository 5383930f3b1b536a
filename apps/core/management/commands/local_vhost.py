import shutil
import subprocess

from django.core.management.base import BaseCommand, CommandError
from kombu import Connection


class Command(BaseCommand):
    help = ("Local development only (bin/run): make sure RabbitMQ vhost VHOST exists and guest may use it, "
            "creating it with rabbitmqctl when missing (the default node has no management API).")

    def add_arguments(self, parser):
        parser.add_argument("vhost")
        parser.add_argument("--host", default="127.0.0.1:5672")

    def handle(self, *args, vhost, host, **options):
        if self._can_open(f"amqp://guest:guest@{host}/{vhost}"):
            return
        if not self._can_open(f"amqp://guest:guest@{host}//"):
            return  # RabbitMQ itself is down: preflight says so, with how to start it
        if shutil.which("rabbitmqctl") is None:
            raise CommandError(f"RabbitMQ vhost {vhost!r} does not exist and rabbitmqctl is not here to create it: "
                               f"create it, or set CELERY_BROKER_URL to a vhost of this stack's own")
        for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
            result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120)
            if result.returncode != 0 and "already exists" not in result.stderr + result.stdout:
                raise CommandError(f"rabbitmqctl {' '.join(args)} failed: "
                                   f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}")
        self.stdout.write(f"vhost: created RabbitMQ vhost {vhost} for this checkout")

    @staticmethod
    def _can_open(url: str) -> bool:
        try:
            with Connection(url, connect_timeout=3) as connection:
                connection.ensure_connection(max_retries=1, timeout=3)
            return True
        except Exception:  # noqa: BLE001  (refused vhost and unreachable broker look alike here)
            return False
