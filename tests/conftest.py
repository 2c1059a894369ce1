import pytest

from sagaflow import faults


@pytest.fixture(autouse=True)
def _disarm_faults():
    yield
    faults.disarm()
