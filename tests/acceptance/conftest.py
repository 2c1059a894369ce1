import pytest
import redis
from django.conf import settings

from tests.processes import Worker


@pytest.fixture(scope="session")
def broker():
    """The Redis the workers use, emptied once so no message of an earlier run
    (pointing at rows of another test database) is delivered to this one."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, broker):
    with django_db_blocker.unblock():
        w = Worker(concurrency=2)
    yield w
    w.stop()
