from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "apps.core"
    verbose_name = "Platform core"

    def ready(self):
        from apps.core import signals  # noqa: F401  (connects post_migrate)
