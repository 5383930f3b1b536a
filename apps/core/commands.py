"""A base for management commands that publish tasks: broker refusals become a clear exit, not a traceback.

Django prints a ``CommandError`` as one line on stderr and exits with status 1, so an operator or a
script sees why nothing was enqueued (queue at its bound, RabbitMQ unreachable) and can retry.
"""
from django.core.management.base import BaseCommand, CommandError

from apps.core.amqp import QueueFull
from apps.core.broker import TRANSIENT_ERRORS, BrokerUnavailable, describe
from apps.core.bulk import BulkPublishError


class PublishingCommand(BaseCommand):
    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except (QueueFull, BulkPublishError) as exc:
            raise CommandError(f"{exc} (backpressure: try again in {QueueFull.retry_after_seconds}s)") from exc
        except BrokerUnavailable as exc:
            raise CommandError(f"{exc} (check it with: python manage.py health)") from exc
        except TRANSIENT_ERRORS as exc:  # down, not answering, or closed the connection (541 noproc, 320 ...)
            raise CommandError(f"RabbitMQ is not reachable or not serving, nothing was enqueued: {describe(exc)} "
                               "(check it with: python manage.py health)") from exc
