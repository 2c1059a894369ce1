"""Concurrent claims of one step, on real PostgreSQL connections: one attempt wins."""

import threading
import uuid

import pytest
from django.db import connection

from sagaflow.models import SagaStep
from sagaflow.saga import engine
from sagaflow.testing import captured_dispatches
from tests.sagaapp import sagas

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_claims_of_one_step_make_one_attempt():
    with captured_dispatches():
        saga = sagas.chain.start({})
    step_id = SagaStep.objects.get(saga=saga, index=0).pk
    racers = 8
    barrier = threading.Barrier(racers)
    claims = []

    def claim():
        try:
            barrier.wait(timeout=10)
            claims.append(engine._claim(step_id, "forward", uuid.uuid4()))
        finally:
            connection.close()

    threads = [threading.Thread(target=claim) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(claims) == racers
    assert sum(c is not None for c in claims) == 1
    assert SagaStep.objects.get(pk=step_id).attempts == 1
