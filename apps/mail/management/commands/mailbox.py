from email import message_from_bytes, policy

from django.core.management.base import BaseCommand

from apps.mail.selectors import captured_mail
from apps.mail.sink import mailbox_dir


class Command(BaseCommand):
    help = "Show what the local SMTP sink captured (var/mailbox/), newest first."

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=20)
        parser.add_argument("--show", action="store_true", help="print the text body of each message too")

    def handle(self, *args, **options):
        files = captured_mail(options["limit"])
        if not files:
            self.stdout.write(f"no captured mail in {mailbox_dir()} (is the smtp-sink running? bin/run starts it)")
            return
        for path in files:
            msg = message_from_bytes(path.read_bytes(), policy=policy.default)
            self.stdout.write(f"{path.name}  {msg['Date']}  to={msg['To']}  subject={msg['Subject']}")
            if options["show"]:
                body = msg.get_body(preferencelist=("plain", "html"))
                self.stdout.write((body.get_content() if body else "").rstrip() + "\n")
