from django.core.management.base import BaseCommand, CommandError

from apps.control import selectors, services
from apps.control.errors import ControlError
from apps.core.broker import TRANSIENT_ERRORS, describe


class Command(BaseCommand):
    help = "Pause or resume a work queue on every worker (kept across worker restarts), or show queue status."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["pause", "resume", "status"])
        parser.add_argument("name", nargs="?", help="queue name (all queues for status)")
        parser.add_argument("--reason", default="")

    def handle(self, *args, action, name, reason, **options):
        try:
            if action == "pause":
                if not name:
                    raise CommandError("queue pause NAME: say which queue")
                services.pause_queue(name, reason=reason)
                self.stdout.write(f"paused {name}: no worker consumes it until `manage.py queue resume {name}`")
            elif action == "resume":
                if not name:
                    raise CommandError("queue resume NAME: say which queue")
                outcome = services.resume_queue(name)
                self.stdout.write(f"resumed {name} ({len(outcome['workers'])} worker(s) answered)")
            else:
                for q in selectors.queues_status():
                    if name and q["name"] != name:
                        continue
                    state = f"PAUSED since {q['paused_at']:%Y-%m-%d %H:%M:%S}" if q["paused"] else "running"
                    self.stdout.write(f"{q['name']:<12} {state:<32} messages={q['messages']} "
                                      f"dead={q['dead_letter_messages']} stored_dead={q['dead_letters_stored']}"
                                      + (f"  unavailable: {q['unavailable']}" if q["unavailable"] else ""))
        except ControlError as exc:
            raise CommandError(exc.message) from exc
        except TRANSIENT_ERRORS as exc:  # the broadcast to the workers could not be sent
            raise CommandError(f"RabbitMQ is not reachable or not serving: {describe(exc)}") from exc
