import json

from django.core.management.base import CommandError

from apps.control import selectors, services
from apps.control.errors import ControlError
from apps.control.models import DeadLetter
from apps.core.commands import PublishingCommand


class Command(PublishingCommand):
    help = "Dead letters: list, show one, replay (one or by filter) to the original route, purge."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        for action in ("list", "replay", "purge"):
            p = sub.add_parser(action)
            p.add_argument("ids", nargs="*", type=int)
            p.add_argument("--queue")
            p.add_argument("--reason", choices=DeadLetter.REASONS)
            p.add_argument("--task-name")
            if action != "list":
                p.add_argument("--all", action="store_true", help="every dead letter (required without a filter)")
            else:
                p.add_argument("--include-replayed", action="store_true")
        show = sub.add_parser("show")
        show.add_argument("id", type=int)

    def _selected(self, options):
        one = lambda name: [options[name]] if options.get(name) else None  # noqa: E731
        return selectors.dead_letters_matching(ids=options.get("ids"), queues=one("queue"),
                                               reasons=one("reason"), task_name=options.get("task_name"))

    def handle(self, *args, **options):
        action = options["action"]
        try:
            services.refresh_dead_letters()
            if action == "show":
                letter = DeadLetter.objects.filter(pk=options["id"]).first()
                if letter is None:
                    raise CommandError(f"no dead letter with id {options['id']}")
                self.stdout.write(json.dumps({
                    "id": letter.id, "queue": letter.queue, "reason": letter.reason, "detail": letter.detail,
                    "task_id": letter.task_id, "task_name": letter.task_name, "route": [letter.exchange, letter.routing_key],
                    "dead_at": str(letter.dead_at), "replayed_at": str(letter.replayed_at) if letter.replayed_at else None,
                    "headers": letter.headers, "body": bytes(letter.body).decode("utf-8", errors="replace"),
                }, indent=2, default=str))
                return
            has_filter = any(options.get(k) for k in ("ids", "queue", "reason", "task_name"))
            if action in ("replay", "purge") and not has_filter and not options.get("all"):
                raise CommandError(f"dlq {action}: give ids or a filter (--queue/--reason/--task-name), or --all")
            qs = self._selected(options)
            if action == "list":
                if not options.get("include_replayed"):
                    qs = qs.filter(replayed_at__isnull=True)
                for letter in qs.order_by("id"):
                    self.stdout.write(f"{letter.id:>6} {letter.dead_letter_queue:<16} {letter.reason:<15} "
                                      f"{letter.task_name or '-':<30} {letter.task_id or '-'}  {letter.detail}")
                self.stdout.write(f"{qs.count()} dead letter(s)")
            elif action == "replay":
                if options.get("ids") and len(options["ids"]) == 1:
                    outcome = services.replay_one(options["ids"][0])
                else:
                    outcome = services.replay_dead_letters(list(qs.filter(replayed_at__isnull=True)))
                self.stdout.write(f"replayed {len(outcome['replayed'])}, skipped {len(outcome['skipped'])}")
                for skip in outcome["skipped"]:
                    self.stdout.write(f"  skipped {skip['id']}: {skip['reason']}")
                not_enqueued = [s for s in outcome["skipped"] if s["code"] in services.NOT_ENQUEUED]
                if not_enqueued:  # exit 1: a script must see that some are still waiting
                    raise CommandError(f"{len(not_enqueued)} dead letter(s) not replayed: RabbitMQ refused them (queue "
                                       "full) or did not confirm them; they stay stored, replay them later")
            else:
                self.stdout.write(f"purged {services.purge_dead_letters(qs, filters={k: options.get(k) for k in ('ids', 'queue', 'reason', 'task_name', 'all')})}")
        except ControlError as exc:
            raise CommandError(exc.message) from exc
