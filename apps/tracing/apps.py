from django.apps import AppConfig


class TracingConfig(AppConfig):
    name = "apps.tracing"
    verbose_name = "Tracing"

    def ready(self):
        from apps.core import demo
        from apps.tracing import otel
        from project import topology

        from apps.control.console.extensions import register_task_panel
        from apps.tracing.console import task_panel

        otel.setup()
        demo.register(topology.OPS_TRACE, "trace", enqueue_demo_batch)
        register_task_panel(task_panel)  # the trace link on a task's console page


def enqueue_demo_batch(i: int) -> str:
    """Demo work: one ingestion batch of a small trace (a root operation, two children, an audit event)."""
    from apps.tracing.demo import demo_batch
    from apps.tracing.tasks import ingest

    records, batch_id = demo_batch(i)
    return ingest.apply_async(args=(records, batch_id), argsrepr=f"[<{len(records)} trace events>]").id
