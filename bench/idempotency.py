"""Requests per second through a trivial JSON view, with and without idempotency keys.

Standalone: ``DATABASE_URL=postgres://… python bench/idempotency.py [requests]``.
Migrates the database in DATABASE_URL, then measures side by side in one run,
interleaved, 3 repetitions, and prints medians with ratios to the baseline:

- baseline: no middleware, the view in ``transaction.atomic``;
- middleware only: the middleware installed, a request without a key;
- first requests, atomic mode: a new key each time (claim + record in the view's
  transaction);
- first requests, claim-first mode: a new key each time, no transaction around the
  view (the claim commits on its own first);
- replays: the same completed key again and again.

Requests go through Django's test client (the full middleware stack, no network).
No assertions: this measures, it does not test.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from django.urls import path  # noqa: E402

from sagaflow.idempotency import idempotent  # noqa: E402
from sagaflow.models import IdempotencyKey  # noqa: E402

SCOPE = "bench"
BODY = '{"order_id": 42, "items": [{"sku": "A-1", "qty": 2}], "note": "bench"}'


def _scope(request):
    return SCOPE


def _trivial(request):
    return JsonResponse({"ok": True, "order_id": 42}, status=201)


plain = transaction.atomic(_trivial)
atomic_idem = transaction.atomic(idempotent(scope=_scope)(_trivial))
claim_first_idem = idempotent(scope=_scope)(_trivial)

urlpatterns = [
    path("plain/", plain),
    path("atomic/", atomic_idem),
    path("claim-first/", claim_first_idem),
]

BASE_MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
WITH_MIDDLEWARE = [*BASE_MIDDLEWARE, "sagaflow.middleware.IdempotencyMiddleware"]


def _run(client: Client, url: str, n: int, key: str | None) -> float:
    """Requests per second for ``n`` POSTs; ``key="new"`` sends a fresh key each time."""
    start = time.perf_counter()
    for _ in range(n):
        headers = {}
        if key == "new":
            headers["Idempotency-Key"] = uuid.uuid4().hex
        elif key is not None:
            headers["Idempotency-Key"] = key
        response = client.post(url, data=BODY, content_type="application/json", headers=headers)
        if response.status_code != 201:
            raise SystemExit(f"{url}: unexpected {response.status_code} {response.content!r}")
    return n / (time.perf_counter() - start)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    call_command("migrate", verbosity=0)
    IdempotencyKey.objects.filter(scope=SCOPE).delete()
    variants = {
        "baseline (no middleware)": (BASE_MIDDLEWARE, "/plain/", None),
        "middleware, no key": (WITH_MIDDLEWARE, "/plain/", None),
        "first request, atomic mode": (WITH_MIDDLEWARE, "/atomic/", "new"),
        "first request, claim-first mode": (WITH_MIDDLEWARE, "/claim-first/", "new"),
        "replay": (WITH_MIDDLEWARE, "/atomic/", "replay-key"),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    with override_settings(ROOT_URLCONF=__name__, DEBUG=False):
        for _ in range(3):
            for name, (middleware, url, key) in variants.items():
                with override_settings(MIDDLEWARE=middleware):
                    client = Client()
                    _run(client, url, 20, key)  # warm up (and create the replay key)
                    results[name].append(_run(client, url, n, key))
    IdempotencyKey.objects.filter(scope=SCOPE).delete()

    base = statistics.median(results["baseline (no middleware)"])
    print(f"{n} requests per measurement, 3 repetitions, medians; Python {sys.version.split()[0]}")
    print(f"{'variant':34} {'req/s':>9} {'ms/req':>8} {'vs baseline':>12}  runs (req/s)")
    for name, values in results.items():
        median = statistics.median(values)
        runs = " ".join(f"{v:.0f}" for v in values)
        print(f"{name:34} {median:9.0f} {1000 / median:8.3f} {median / base:11.2f}x  {runs}")


if __name__ == "__main__":
    main()
