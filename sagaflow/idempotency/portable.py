"""The idempotency-key queries for databases other than PostgreSQL (SQLite, for
``make demo`` and local development).

Same rules as the PostgreSQL statements of ``postgresql``, written with the ORM:
the unique (scope, method, route, key) constraint still decides who wins a claim
(create, and on IntegrityError read the winner), and every takeover is a
compare-and-set ``UPDATE``. What PostgreSQL adds is not reproduced: a loser does
not get 409 at once while the winner's transaction is open (SQLite serialises
writers anyway), and times come from this process's clock. Use PostgreSQL in
production.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from ..models import IdempotencyKey, IdempotencyKeyState
from .outcomes import Claimed, ClaimOutcome, Existing, Identity, Vanished


def claim(
    identity: Identity, fingerprint: str, *, lease: float, ttl: float, using: str
) -> ClaimOutcome:
    """Take the key through the unique constraint; a takeover is a compare-and-set."""
    now = timezone.now()
    token = uuid.uuid4()
    keys = IdempotencyKey.objects.using(using)
    where = {
        "scope": identity.scope,
        "method": identity.method,
        "route": identity.route,
        "key": identity.key,
    }
    fresh = {
        "fingerprint": fingerprint,
        "state": IdempotencyKeyState.IN_FLIGHT,
        "lock_token": token,
        "locked_until": now + timedelta(seconds=lease),
        "completed_at": None,
        "response_status": None,
        "response_headers": [],
        "response_body": None,
    }
    try:
        with transaction.atomic(using=using):
            created = keys.create(
                **where,
                **fresh,
                attempts=1,
                expires_at=now + timedelta(seconds=ttl),
                created_at=now,
            )
        return Claimed(id=created.pk, token=token, attempt=1, alias=using)
    except IntegrityError:
        pass
    row = keys.filter(**where).first()
    if row is None:
        return Vanished()
    expired = row.expires_at <= now
    # An in-flight key always has locked_until (the claim sets both); the column is
    # nullable for completed keys.
    lapsed = row.state == IdempotencyKeyState.IN_FLIGHT and row.locked_until <= now  # type: ignore[operator]
    if (expired and (row.state == IdempotencyKeyState.COMPLETED or lapsed)) or (
        lapsed and row.fingerprint == fingerprint
    ):
        attempts = 1 if expired else row.attempts + 1
        renew = {"expires_at": now + timedelta(seconds=ttl), "created_at": now} if expired else {}
        taken = keys.filter(pk=row.pk, state=row.state, lock_token=row.lock_token).update(
            **fresh, attempts=attempts, **renew
        )
        if taken:
            return Claimed(id=row.pk, token=token, attempt=attempts, alias=using)
        return Vanished()  # somebody else took it first: read again
    return Existing(
        state=row.state,
        fingerprint=row.fingerprint,
        status=row.response_status,
        headers=row.response_headers or [],
        body=None if row.response_body is None else bytes(row.response_body),
    )


def complete(
    claimed: Claimed, *, status: int, headers: list[list[str]], body: bytes | None
) -> bool:
    return bool(
        IdempotencyKey.objects.using(claimed.alias)
        .filter(pk=claimed.id, lock_token=claimed.token, state=IdempotencyKeyState.IN_FLIGHT)
        .update(
            state=IdempotencyKeyState.COMPLETED,
            lock_token=None,
            locked_until=None,
            completed_at=timezone.now(),
            response_status=status,
            response_headers=headers,
            response_body=body,
        )
    )


def release(claimed: Claimed) -> bool:
    deleted, _ = (
        IdempotencyKey.objects.using(claimed.alias)
        .filter(pk=claimed.id, lock_token=claimed.token)
        .delete()
    )
    return bool(deleted)


def delete_expired(batch_size: int, using: str) -> int:
    total = 0
    while True:
        now = timezone.now()
        ids = list(
            IdempotencyKey.objects.using(using)
            .filter(Q(expires_at__lt=now) & (Q(state="completed") | Q(locked_until__lt=now)))
            .order_by("expires_at")
            .values_list("pk", flat=True)[:batch_size]
        )
        deleted, _ = IdempotencyKey.objects.using(using).filter(pk__in=ids).delete()
        total += deleted
        if len(ids) < batch_size:
            return total
