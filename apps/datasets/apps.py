from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    name = "apps.datasets"

    def ready(self):
        from apps.core import demo
        from apps.datasets.demo import enqueue_demo_import

        demo.register("dataset", "import", enqueue_demo_import)
