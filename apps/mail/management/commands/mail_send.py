import json
import time

from django.core.management.base import CommandError

from apps.core.commands import PublishingCommand
from apps.mail import selectors, services
from apps.mail.models import FINAL_STATES


class Command(PublishingCommand):
    help = "Store a message in the outbox and enqueue its delivery (optionally wait for the outcome)."

    def add_arguments(self, parser):
        parser.add_argument("--to", action="append", required=True, help="recipient (repeat for several)")
        parser.add_argument("--subject", required=True)
        body = parser.add_mutually_exclusive_group(required=True)
        body.add_argument("--body", help="plain-text body")
        body.add_argument("--template", help="template name: mail/<name>.txt and/or mail/<name>.html")
        parser.add_argument("--context", default="{}", help="JSON object for the template")
        parser.add_argument("--idempotency-key", help="the same key never sends a second message")
        parser.add_argument("--bulk", action="store_true", help="bulk lane (mail_bulk) instead of transactional")
        parser.add_argument("--wait", action="store_true", help="wait until the message is sent or fails")
        parser.add_argument("--timeout", type=float, default=120, help="seconds to --wait (default 120)")

    def handle(self, *args, **options):
        try:
            context = json.loads(options["context"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--context is not valid JSON: {exc}") from exc
        try:
            message, created = services.enqueue(
                to=options["to"], subject=options["subject"], body=options["body"] or "",
                template=options["template"] or "", context=context,
                idempotency_key=options["idempotency_key"], bulk=options["bulk"],
            )
        except services.MailInputError as exc:
            raise CommandError(str(exc)) from exc
        verb = "queued" if created else "already exists (same idempotency key), not stored again:"
        self.stdout.write(f"message {message.pk} {verb} status={message.status}")
        if not options["wait"]:
            return
        deadline = time.monotonic() + options["timeout"]
        while message.status not in FINAL_STATES:
            if time.monotonic() > deadline:
                raise CommandError(f"message {message.pk} still {message.status} after {options['timeout']}s "
                                   "(is the io worker running? python manage.py health)")
            time.sleep(0.2)
            message = selectors.message_by_id(message.pk)
        line = f"message {message.pk} {message.status}: {message.smtp_reply or message.last_error}"
        if message.status != "SENT":
            raise CommandError(line)
        self.stdout.write(self.style.SUCCESS(line))
