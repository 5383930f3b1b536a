from django.apps import AppConfig


class MailConfig(AppConfig):
    name = "apps.mail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Imported here, not at the top: Django loads apps.py before any model, and these import models.
        from apps.core import demo, schedules
        from apps.mail import demo as mail_demo
        from apps.mail import tasks  # noqa: F401  (registered in every process: services publish them by name)
        from project import topology

        schedules.register(schedules.DefaultSchedule(
            name="Mail: re-enqueue stale messages",
            task="mail.requeue_stale",
            every_seconds=60,
            description="Re-enqueues outbox messages whose task was lost or whose worker died mid-send (apps/mail).",
        ))
        demo.register(topology.MAIL, "send", mail_demo.enqueue_send)
        demo.register(topology.MAIL, "probe", mail_demo.enqueue_probe)
