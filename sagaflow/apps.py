from django.apps import AppConfig


class SagaflowConfig(AppConfig):
    name = "sagaflow"
    verbose_name = "sagaflow"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Only wiring here: import the sagas of every installed app and the checks.
        from . import checks, metrics, registry  # noqa: F401

        registry.autodiscover()
        metrics.install()
