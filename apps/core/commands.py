"""A base for management commands that publish tasks: broker refusals become a clear exit, not a traceback.

Django prints a ``CommandError`` as one line on stderr and exits with status 1, so an operator or a
script sees why nothing was enqueued (queue at its bound, RabbitMQ unreachable) and can retry.
"""
import kombu.exceptions
from django.core.management.base import BaseCommand, CommandError

from apps.core.amqp import QueueFull
from apps.core.bulk import BulkPublishError


class PublishingCommand(BaseCommand):
    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except (QueueFull, BulkPublishError) as exc:
            raise CommandError(f"{exc} (backpressure: try again in {QueueFull.retry_after_seconds}s)") from exc
        except kombu.exceptions.OperationalError as exc:
            raise CommandError(f"RabbitMQ is not reachable, nothing was enqueued: {exc or type(exc).__name__} "
                               "(check it with: python manage.py health)") from exc
