from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    name = "apps.datasets"

    def ready(self):
        from apps.control.console.extensions import register_task_panel
        from apps.core import demo
        from apps.datasets.console import task_panel
        from apps.datasets.demo import enqueue_demo_import

        demo.register("dataset", "import", enqueue_demo_import)
        register_task_panel(task_panel)  # the import on its task's console page
