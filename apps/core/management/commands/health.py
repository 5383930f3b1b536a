import json

from django.core.management.base import BaseCommand

from apps.core.health import health_report


class Command(BaseCommand):
    help = ("Check broker, database, workers per role and queue depths; exit 1 when something is wrong. "
            "Workers as the event recorder last heard them (fast); --live asks them now.")

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument("--live", action="store_true",
                            help="ask every worker now (a broadcast inspection; waits --timeout for replies)")
        parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for replies with --live")

    def handle(self, *args, **options):
        report = health_report(live=options["live"], timeout=options["timeout"])
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self._print(report)
        if not report["ok"]:
            raise SystemExit(1)

    def _print(self, report):
        out = self.stdout.write
        out(f"broker:   {report['broker']}")
        out(f"database: {report['database']}")
        out(f"workers:  ({report['workers_source']})")
        for w in report["workers"]:
            out(f"  {w['hostname']:<28} role={w['role']:<4} pool={w['pool']:<8} "
                f"concurrency={w['concurrency']} queues={','.join(w['queues'])} "
                f"seen {w['seen_seconds_ago']:g} s ago{'  FOREIGN' if w['foreign'] else ''}")
        if not report["workers"]:
            out("  (none online)")
        out(f"queues:   ({report['queues_source']})")
        for q in report["queues"]:
            messages = "unavailable" if q.get("unavailable") else "missing" if q["messages"] is None else q["messages"]
            out(f"  {q['name']:<16} messages={messages!s:<8} consumers={q['consumers']}")
        out("nodes:")
        for node in report["cluster"]["nodes"]:
            out(f"  {node['url']:<40} {'up' if node['up'] else 'DOWN'} {node['name']}")
        leaders = report["cluster"]["queues"]
        out("queue leaders:" + ("" if leaders else f" unknown ({report['cluster']['management']})"))
        for q in leaders:
            out(f"  {q['name']:<16} leader={q['leader']} members={len(q['members'])} online={len(q['online'])}")
        if report["problems"]:
            self.stderr.write("problems:\n" + "\n".join(f"  - {p}" for p in report["problems"]))
        else:
            out(self.style.SUCCESS(f"all healthy ({report['elapsed_ms']:g} ms)"))
