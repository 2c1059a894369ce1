"""The requests the idempotency bench times: its views, their URLconf, and a WSGI call
path without a socket.

Every figure of ``bench.idempotency`` is one of these views behind one of two
middleware stacks (``CommonMiddleware`` alone, or with ``IdempotencyMiddleware``), so
that only the idempotency work differs between a figure and its reference. The scope
is a constant (no user lookup) for the same reason.
"""

from __future__ import annotations

import io
import json
import sys

SCOPE = "bench-idempotency"
CUSTOMER = "bench-idempotency@example.com"
BODY = json.dumps(
    {"customer": CUSTOMER, "total_cents": 4200, "items": [{"sku": "A-1", "qty": 2}]}
).encode()
BASE_MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
WITH_MIDDLEWARE = [*BASE_MIDDLEWARE, "sagaflow.middleware.IdempotencyMiddleware"]


# --- the views ----------------------------------------------------------------------


def _scope(request) -> str:
    return SCOPE


def _write(request):
    """A realistic small write: parse the JSON body, insert one order, answer 201."""
    from django.http import JsonResponse

    from demo_shop.models import Order, Style

    data = json.loads(request.body)
    order = Order.objects.create(
        customer=data["customer"], style=Style.ORCHESTRATED, total_cents=data["total_cents"]
    )
    return JsonResponse({"order_id": order.pk, "status": order.status}, status=201)


def _trivial(request):
    from django.http import JsonResponse

    return JsonResponse({"ok": True, "order_id": 42}, status=201)


def _read(request):
    """The floor under any replay: one indexed read (raw SQL), then a small JSON."""
    from django.db import connection
    from django.http import JsonResponse

    with connection.cursor() as cursor:
        cursor.execute('SELECT "response_status" FROM "sagaflow_idempotencykey" WHERE "id" = 0')
        row = cursor.fetchone()
    return JsonResponse({"ok": True, "order_id": 42, "row": row}, status=201)


class URLConf:
    """A URLconf object (``ROOT_URLCONF`` may be one): no module to import."""

    def __init__(self) -> None:
        from django.db import transaction
        from django.urls import path

        from sagaflow.idempotency import idempotent

        keyed = idempotent(scope=_scope)
        self.urlpatterns = [
            path("write/", transaction.atomic(_write)),
            path("write-keyed/", transaction.atomic(keyed(_write))),
            path("write-claim-first/", keyed(transaction.atomic(_write))),
            path("trivial/", _trivial),
            path("read/", _read),
        ]


# --- the WSGI call path ---------------------------------------------------------------


class Wsgi:
    """POSTs through a ``WSGIHandler`` built with one middleware stack."""

    def __init__(self, middleware: list[str]) -> None:
        from django.core.handlers.wsgi import WSGIHandler
        from django.test.utils import override_settings

        with override_settings(MIDDLEWARE=middleware):
            self.handler = WSGIHandler()  # loads the middleware chain now
        self.status = ""

    def _start_response(self, status: str, headers: list, exc_info=None) -> None:
        self.status = status

    def post(self, path: str, key: str | None = None) -> bytes:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": path,
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(BODY)),
            "HTTP_HOST": "testserver",
            "HTTP_ACCEPT": "application/json",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(BODY),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        if key is not None:
            environ["HTTP_IDEMPOTENCY_KEY"] = key
        response = self.handler(environ, self._start_response)
        try:
            body = b"".join(response)
        finally:
            response.close()
        if not self.status.startswith("201"):
            raise RuntimeError(f"POST {path}: unexpected {self.status} {body[:300]!r}")
        return body
