"""django-celery-outbox's relay on the bench database and broker (a child of
bench/relay_peers.py).

Prints one JSON line: ``{"rates": [...]}`` (rows/s per repetition) or ``{"error": "..."}``.
Run with ``DJANGO_SETTINGS_MODULE=bench.relay_settings BENCH_RELAY_DCO=1``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(rows: int, runs: int) -> dict:
    import django

    django.setup()
    import logging

    import redis
    import structlog

    # Its relay logs every batch at INFO; quiet, so logging is not what we measure.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection, transaction
    from django_celery_outbox.app import OutboxCelery
    from django_celery_outbox.relay._config import RelayConfig
    from django_celery_outbox.relay._relay import Relay

    call_command("migrate", "django_celery_outbox", verbosity=0)
    app = OutboxCelery("bench_dco")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    queue = settings.QUEUE
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE celery_outbox")
    rates = []
    for _ in range(runs):
        with transaction.atomic():  # a template row, as its API writes it
            app.send_task("bench.naive", args=[{"n": 0, "key": "order-0"}], queue=queue)
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO celery_outbox (created_at, updated_at, retries, retry_after,"
                " task_id, task_name, args, kwargs, redacted_args, redacted_kwargs, options,"
                " sentry_trace_id, sentry_baggage, structlog_context, schema_version)"
                " SELECT now(), NULL, 0, NULL, gen_random_uuid()::text, t.task_name,"
                "  jsonb_build_array(jsonb_build_object('n', g, 'key', 'order-' || (g / 4))),"
                "  t.kwargs, t.redacted_args, t.redacted_kwargs, t.options, t.sentry_trace_id,"
                "  t.sentry_baggage, t.structlog_context, t.schema_version"
                " FROM (SELECT * FROM celery_outbox ORDER BY id LIMIT 1) t,"
                "  generate_series(1, %s) g",
                [rows],
            )
            cursor.execute(  # the template row
                "DELETE FROM celery_outbox WHERE id = (SELECT min(id) FROM celery_outbox)"
            )
            cursor.execute("VACUUM ANALYZE celery_outbox")
        relay = Relay(app, RelayConfig.init(batch_size=100, idle_time=0.001))
        started = time.perf_counter()
        while True:
            relay._processing()
            with connection.cursor() as cursor:
                cursor.execute("SELECT EXISTS (SELECT 1 FROM celery_outbox)")
                if not cursor.fetchone()[0]:
                    break
        rates.append(rows / (time.perf_counter() - started))
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(queue)
    return {"rates": rates}


if __name__ == "__main__":
    try:
        result = main(int(sys.argv[1]), int(sys.argv[2]))
    except Exception as exc:  # reported in the figure's note
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
