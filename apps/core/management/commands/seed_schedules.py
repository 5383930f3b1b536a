from django.core.management.base import BaseCommand

from apps.core.schedules import default_schedules, seed_schedules


class Command(BaseCommand):
    help = "Create the default periodic tasks that do not exist yet (never changes existing ones)."

    def handle(self, *args, **options):
        created = seed_schedules()
        kept = len(default_schedules()) - len(created)
        self.stdout.write(f"schedules: {len(created)} created, {kept} already present (left as they are)")
