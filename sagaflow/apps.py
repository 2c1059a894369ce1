from django.apps import AppConfig


class SagaflowConfig(AppConfig):
    name = "sagaflow"
    verbose_name = "sagaflow"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Only wiring here: hand definitions the engine, import the sagas of every
        # installed app and the checks. (Imported here: models are ready only now.)
        from . import checks  # noqa: F401
        from .ops import metrics
        from .saga import definition, engine, registry

        definition.install_starter(engine.start)
        registry.autodiscover()
        metrics.install()
