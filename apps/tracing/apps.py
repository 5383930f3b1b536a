from django.apps import AppConfig


class TracingConfig(AppConfig):
    name = "apps.tracing"
    verbose_name = "Tracing"

    def ready(self):
        # Imported here, not at the top: Django loads apps.py before any model, and these import models.
        from apps.control.console.extensions import register_task_panel
        from apps.core import demo, schedules
        from apps.tracing import demo as tracing_demo
        from apps.tracing import otel
        from apps.tracing.console import task_panel
        from project import topology

        otel.setup()
        schedules.register(
            schedules.DefaultSchedule(
                name="Trace retention",
                task="tracing.purge_old_events",
                crontab={"minute": "30", "hour": "*"},
                description="Deletes trace events stored longer ago than TRACING_RETENTION_DAYS, in bounded batches.",
            ),
            schedules.DefaultSchedule(
                name="Trace export",
                task="tracing.export_pending",
                every_seconds=15,
                description="Exports trace events still pending to the OTLP collector (catch-up after an outage).",
            ),
        )
        demo.register(topology.OPS_TRACE, "trace", tracing_demo.enqueue_demo_batch)
        demo.register(topology.OPS_TRACE, "probe", tracing_demo.enqueue_probe)
        register_task_panel(task_panel)  # the trace link on a task's console page
