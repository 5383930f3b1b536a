import shutil
import subprocess

from django.core.management.base import BaseCommand, CommandError
from kombu import Connection


class Command(BaseCommand):
    help = ("Local development only (bin/run): make sure the broker URL's vhost exists on the local RabbitMQ and "
            "guest may use it, creating it with rabbitmqctl when missing (the default node has no management API).")

    def handle(self, *args, **options):
        from project.celery import app

        url = app.conf.broker_url
        broker = Connection(url)
        vhost = broker.virtual_host or "/"
        if broker.hostname not in ("127.0.0.1", "localhost") or vhost == "/" or self._can_open(url):
            return  # not ours to create, the default vhost, or already there
        if not self._can_open(f"amqp://{broker.userid}:{broker.password}@{broker.hostname}:{broker.port or 5672}//"):
            return  # RabbitMQ itself is down: preflight says so, with how to start it
        if shutil.which("rabbitmqctl") is None:
            raise CommandError(f"RabbitMQ vhost {vhost!r} does not exist and rabbitmqctl is not here to create it: "
                               f"create it, or set CELERY_BROKER_URL to a vhost of this stack's own")
        for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, broker.userid, ".*", ".*", ".*"]):
            result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120)
            if result.returncode != 0 and "already exists" not in result.stderr + result.stdout:
                detail = (result.stderr or result.stdout).strip().splitlines()
                raise CommandError(f"rabbitmqctl {' '.join(args)} failed: {detail[-1] if detail else result.returncode}")
        self.stdout.write(f"vhost: created RabbitMQ vhost {vhost} for this checkout")

    @staticmethod
    def _can_open(url: str) -> bool:
        try:
            with Connection(url, connect_timeout=3) as connection:
                connection.ensure_connection(max_retries=1, timeout=3)
            return True
        except Exception:  # noqa: BLE001  (refused vhost and unreachable broker look alike here)
            return False
