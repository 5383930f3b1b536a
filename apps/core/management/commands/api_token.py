from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = ("Print USER's API token, creating it the first time (DRF authtoken). Call the API with "
            "`Authorization: Token <key>`. --rotate replaces it (the old key stops working).")

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--rotate", action="store_true", help="replace the token with a new one")

    def handle(self, *args, username, rotate, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}: create one with `python manage.py createsuperuser` "
                               "(locally, bin/run creates 'admin')")
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive: its token would be refused")
        if rotate:
            Token.objects.filter(user=user).delete()
        token, created = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
        if created:
            self.stderr.write(f"created a token for {username}; use it as: "
                              f"curl -H 'Authorization: Token {token.key}' http://127.0.0.1:8000/api/v1/health/")
