"""Views and URLconf for the idempotency tests (``@pytest.mark.urls`` points here).

Every view body reports to ``recorder``, so tests count how often it really ran.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers
from rest_framework.authentication import BasicAuthentication, SessionAuthentication
from rest_framework.decorators import api_view
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from sagaflow.idempotency import idempotent
from tests.sagaapp.models import AtomicWrite

MIDDLEWARE = "sagaflow.middleware.IdempotencyMiddleware"


class Recorder:
    """What the views did, shared across the threads of one test."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[str] = []
        #: Set: every view body waits here until the test opens it.
        self.gate: threading.Event | None = None
        #: Status codes the next calls return, in order (then 201).
        self.statuses: list[int] = []
        self.raise_next = False

    def enter(self, name: str) -> int:
        with self.lock:
            self.calls.append(name)
            number = len(self.calls)
            status = self.statuses.pop(0) if self.statuses else 201
            raise_now, self.raise_next = self.raise_next, False
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise RuntimeError("test gate never opened")
        if raise_now:
            raise RuntimeError("view failed")
        return number if status == 201 else -status

    def count(self, name: str | None = None) -> int:
        with self.lock:
            return len([c for c in self.calls if name is None or c == name])


recorder = Recorder()


def _payload(request, number: int) -> dict:
    info = request.idempotency
    body = request.body
    return {
        "call": number,
        "attempt": info.attempt if info else None,
        "mode": info.mode if info else None,
        "echo": json.loads(body) if body and request.content_type == "application/json" else None,
        "nonce": uuid.uuid4().hex,  # differs per execution: a replay must repeat it
    }


def _respond(request, name: str, write: bool = False) -> HttpResponse:
    number = recorder.enter(name)
    if write:
        AtomicWrite.objects.create(saga_id=uuid.uuid4(), step=name)
    if number < 0:
        return JsonResponse({"error": "failing on purpose"}, status=-number)
    response = JsonResponse(_payload(request, number), status=201)
    response["Location"] = f"/orders/{number}/"
    response["X-Internal-Token"] = "secret"
    response.set_cookie("sessionish", "do-not-replay")
    return response


@idempotent
def orders(request):
    return _respond(request, "orders")


@idempotent(required=True)
def required_orders(request):
    return _respond(request, "required")


@idempotent
def refund(request, pk: int):
    return _respond(request, "refund")


@transaction.atomic
@idempotent
def atomic_orders(request):
    return _respond(request, "atomic", write=True)


@idempotent
def writing_orders(request):
    """Claim-first unless ATOMIC_REQUESTS wraps it."""
    return _respond(request, "writing", write=True)


@login_required
@idempotent
def private_orders(request):
    return _respond(request, "private")


@idempotent(scope=lambda request: request.headers.get("X-Tenant"))
def tenant_orders(request):
    return _respond(request, "tenant")


@idempotent(ttl=timedelta(seconds=0.5))
def short_lived(request):
    return _respond(request, "short")


@idempotent
def streaming(request):
    recorder.enter("streaming")
    return StreamingHttpResponse(iter([b"part1,", b"part2"]), content_type="text/plain")


@idempotent
class OrderView(View):
    def post(self, request):
        return _respond(request, "cbv")

    def get(self, request):
        return _respond(request, "cbv-get")


class DrfOrderSerializer(serializers.Serializer):
    amount = serializers.IntegerField(min_value=1)


class DrfOrders(APIView):
    authentication_classes = [BasicAuthentication]
    permission_classes = [IsAuthenticated]

    @idempotent
    def post(self, request):
        DrfOrderSerializer(data=request.data).is_valid(raise_exception=True)
        number = recorder.enter("drf")
        return Response({"call": number, "user": request.user.username}, status=201)


@api_view(["POST"])
@idempotent
def drf_function(request):
    number = recorder.enter("drf-function")
    return Response({"call": number, "data": request.data}, status=201)


@idempotent
async def async_orders(request):
    number = recorder.enter("async")
    return JsonResponse({"call": number, "mode": request.idempotency.mode}, status=201)


@idempotent
def uploads(request):
    """Reads the form as parsed fields and files, as a multipart view does."""
    number = recorder.enter("upload")
    AtomicWrite.objects.create(saga_id=uuid.uuid4(), step="upload")
    files = {name: [f.size for f in request.FILES.getlist(name)] for name in request.FILES}
    fields = sorted(k for k in request.POST if k != "csrfmiddlewaretoken")
    return JsonResponse(
        {"call": number, "fields": fields, "files": files, "nonce": uuid.uuid4().hex},
        status=201,
    )


class DrfUploads(APIView):
    """Session-authenticated: DRF's CSRF check reads ``request.POST`` (the stream) first."""

    authentication_classes = [SessionAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = [MultiPartParser, JSONParser]

    @idempotent
    def post(self, request):
        number = recorder.enter("drf-upload")
        AtomicWrite.objects.create(saga_id=uuid.uuid4(), step="drf-upload")
        fields = sorted(k for k in request.data if k != "csrfmiddlewaretoken")
        return Response({"call": number, "fields": fields}, status=201)


@idempotent
def sized(request):
    """A response of ``?size=`` bytes with ``?status=``; ``?no_store=1`` forbids caching it."""
    number = recorder.enter("sized")
    AtomicWrite.objects.create(saga_id=uuid.uuid4(), step="sized")
    size = int(request.GET.get("size", "10"))
    response = HttpResponse(
        (f"{number}:" + "x" * size)[:size].encode(),
        status=int(request.GET.get("status", "201")),
        content_type="text/plain",
    )
    if request.GET.get("no_store"):
        response["Cache-Control"] = "no-store"
    return response


@csrf_exempt
@idempotent(scope=lambda request: request.headers.get("X-Tenant"))
def server_orders(request):
    """For tests over a real server (no session, no CSRF token): writes one row."""
    number = recorder.enter("server")
    AtomicWrite.objects.create(saga_id=uuid.uuid4(), step="server")
    return JsonResponse({"call": number, "key": request.idempotency.key}, status=201)


urlpatterns = [
    path("orders/", orders),
    path("orders/required/", required_orders),
    path("orders/<int:pk>/refund/", refund),
    path("orders/atomic/", atomic_orders),
    path("orders/writing/", writing_orders),
    path("orders/private/", private_orders),
    path("orders/tenant/", tenant_orders),
    path("orders/short/", short_lived),
    path("orders/stream/", streaming),
    path("orders/cbv/", OrderView.as_view()),
    path("drf/orders/", DrfOrders.as_view()),
    path("drf/function/", drf_function),
    path("async/orders/", async_orders),
    path("uploads/", uploads),
    path("drf/uploads/", DrfUploads.as_view()),
    path("sized/", sized),
    path("server/orders/", server_orders),
]
