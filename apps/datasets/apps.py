from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    name = "apps.datasets"

    def ready(self):
        # Imported here, not at the top: Django loads apps.py before any model, and these import models.
        from apps.control.console.extensions import register_task_panel
        from apps.core import demo, schedules
        from apps.datasets import demo as datasets_demo
        from apps.datasets import tasks  # noqa: F401  (registered in every process: services publish them by name)
        from apps.datasets.console import task_panel
        from project import topology

        schedules.register(schedules.DefaultSchedule(
            name="Datasets: recover stuck imports",
            task="datasets.recover_stuck",
            every_seconds=60,
            description="Re-publishes imports no worker took, fails those whose worker vanished (apps/datasets).",
        ))
        demo.register(topology.DATASET, "import", datasets_demo.enqueue_demo_import)
        demo.register(topology.DATASET, "probe", datasets_demo.enqueue_probe)
        register_task_panel(task_panel)  # the import on its task's console page
