"""Route the fake services' tables to their own connection (``services``).

It points at the same database as ``default`` (a test mirror of it), but being a
second connection, a service's write commits on its own: a charge made while a
consumer's transaction is open survives that transaction's rollback, as a remote
payment provider's would. Migrations run on ``default`` only.
"""

from __future__ import annotations

SERVICES = "services"
SERVICE_MODELS = frozenset({"charge", "shipment", "servicerequest", "faultrule"})


class ServicesRouter:
    def _route(self, model) -> str | None:
        meta = model._meta
        if meta.app_label == "demo_shop" and meta.model_name in SERVICE_MODELS:
            return SERVICES
        return None

    def db_for_read(self, model, **hints):
        return self._route(model)

    def db_for_write(self, model, **hints):
        return self._route(model)

    def allow_relation(self, obj1, obj2, **hints):
        return None

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return False if db == SERVICES else None
