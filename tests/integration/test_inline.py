"""The engine driven in-process (sagaflow.testing) against real PostgreSQL."""

import pytest

from sagaflow.models import Saga, SagaState, StepState
from sagaflow.testing import run_inline
from tests.sagaapp import sagas
from tests.sagaapp.models import Call, Effect

pytestmark = pytest.mark.django_db


def test_happy_path_records_every_result():
    saga = run_inline(sagas.chain, {"order": 1})
    assert saga.state == SagaState.COMPLETED
    assert list(saga.results) == ["s0", "s1", "s2", "s3"]
    assert [s.state for s in saga.steps.order_by("index")] == [StepState.SUCCEEDED] * 4
    assert Effect.objects.filter(saga_id=saga.id, kind="step").count() == 4


@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_abort_compensates_earlier_steps_in_reverse(position):
    name = f"s{position}"
    saga = run_inline(sagas.chain, {"fail": {name: "abort"}})
    assert saga.state == SagaState.COMPENSATED
    compensated = list(
        Call.objects.filter(saga_id=saga.id, kind="compensation").values_list("step", flat=True)
    )
    assert compensated == [f"s{i}" for i in reversed(range(position))]
    assert Call.objects.filter(saga_id=saga.id, step=name, kind="step").count() == 1
    assert Saga.objects.count() == 1
