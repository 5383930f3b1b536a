from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from apps.core.broker import BrokerUnavailable, check_broker


class Command(BaseCommand):
    help = "Check that RabbitMQ and the database are reachable; one clear line and exit 1 when not."

    def handle(self, *args, **options):
        try:
            check_broker()
        except BrokerUnavailable as exc:
            raise CommandError(str(exc)) from exc
        try:
            connection.ensure_connection()
        except Exception as exc:
            raise CommandError(f"the database is not reachable ({exc}); check DATABASE_URL") from exc
        from kombu.utils.url import maybe_sanitize_url

        from project.celery import app

        self.stdout.write(f"preflight: RabbitMQ ({maybe_sanitize_url(app.conf.broker_url)}) and {connection.vendor} reachable")
