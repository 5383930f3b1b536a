import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Local development only: ensure a superuser 'admin' and print its password (kept in var/)."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("local_admin only runs with DEBUG on (local development); "
                               "in production use `manage.py createsuperuser`")
        path = settings.VAR_DIR / "local-admin-password"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(12))
            path.chmod(0o600)
        password = path.read_text().strip()
        user, _ = get_user_model().objects.get_or_create(username="admin", defaults={"email": "admin@localhost"})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(password)
