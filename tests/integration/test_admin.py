import pytest

from sagaflow.testing import run_inline
from tests.sagaapp import sagas

pytestmark = pytest.mark.django_db


def test_saga_changelist_and_detail_render_escaped(admin_client):
    saga = run_inline(sagas.chain, {"fail": {"s1": "abort"}, "note": "<script>x</script>"})
    listing = admin_client.get("/admin/sagaflow/saga/?state__exact=compensated")
    assert listing.status_code == 200 and str(saga.id) in listing.content.decode()
    detail = admin_client.get(f"/admin/sagaflow/saga/{saga.pk}/change/")
    body = detail.content.decode()
    assert detail.status_code == 200
    assert "Abort: s1 refused" in body and "<script>x</script>" not in body
    search = admin_client.get(f"/admin/sagaflow/saga/?q={saga.correlation_id}")
    assert str(saga.id) in search.content.decode()
