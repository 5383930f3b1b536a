from django.apps import AppConfig


class MailConfig(AppConfig):
    name = "apps.mail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from apps.core import demo
        from project import topology

        # Transactional only: bulk delivery stores no result row, and the demo counts result rows.
        demo.register(topology.MAIL, "send", _demo_send(bulk=False))


def _demo_send(bulk: bool):
    def enqueue(i: int) -> str:
        from apps.mail import services

        # One attempt: without an SMTP server (e.g. in tests) the demo fails at once with
        # "cannot connect to host:port" instead of retrying for minutes.
        message, _ = services.enqueue(
            to=[f"demo{i}@example.com"], subject=f"Demo {'bulk' if bulk else 'transactional'} message {i}",
            template="demo", context={"number": i, "lane": "bulk" if bulk else "transactional"},
            bulk=bulk, max_attempts=1,
        )
        return message.task_id

    return enqueue
