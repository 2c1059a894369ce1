"""Orders belong to whoever placed them, and so do idempotency keys.

A logged-in user, or an anonymous shopper known by their session. Orders are
addressed by a public id that cannot be guessed from another, and anybody else
gets the same 404 as for an id that does not exist. Keys are scoped the same way:
not by address, and not by a header the client makes up. Over Django's full
request stack; sagas run in this process.
"""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from demo_shop.models import Order
from sagaflow.models import IdempotencyKey
from sagaflow.testing import captured_dispatches
from tests.shop_support import (
    SHOP_DB,
    assert_nothing_written,
    assert_problem,
    fresh_shop,
    order_body,
    post_checkout,
    shopper,
)

pytestmark = [pytest.mark.django_db(transaction=True, databases=SHOP_DB), pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _no_broker():
    quiet = {**settings.SAGAFLOW, "OUTBOX_KICK_ON_COMMIT": False}
    with captured_dispatches(), override_settings(SAGAFLOW=quiet):
        yield


def place(client: Client, customer: str = "owner@b.example", **post) -> Order:
    response = post_checkout(order_body(customer, "orchestrated"), client=client, **post)
    assert response.status_code == 202, response.content
    return Order.objects.get(public_id=response.json()["order"]["public_id"])


def user_client(username: str) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_user(username, password="pw"))
    return client


def assert_hidden_from(client: Client, order: Order) -> None:
    """``client`` gets the 404 of an unknown id, from the API and from the page."""
    body = assert_problem(client.get(f"/api/orders/{order.public_id}"), 404, "not-found")
    assert order.customer not in str(body)
    page = client.get(f"/orders/{order.public_id}")
    assert page.status_code == 404
    assert order.customer.encode() not in page.content


def assert_shown_to(client: Client, order: Order) -> None:
    data = client.get(f"/api/orders/{order.public_id}").json()
    assert (data["order"]["public_id"], data["order"]["customer"]) == (
        str(order.public_id),
        order.customer,
    )
    assert order.customer.encode() in client.get(f"/orders/{order.public_id}").content


def test_an_anonymous_shoppers_order_is_theirs_alone():
    fresh_shop()
    alice, bob = shopper(), shopper()
    order = place(alice)
    assert order.user is None and order.shopper
    assert_shown_to(alice, order)
    assert_hidden_from(bob, order)
    assert_hidden_from(Client(), order)  # no session at all
    assert_hidden_from(user_client("carol"), order)


def test_the_public_id_is_the_only_address_and_says_nothing_of_the_others():
    fresh_shop()
    alice = shopper()
    first, second = place(alice), place(alice)
    assert first.public_id.version == second.public_id.version == 4
    assert first.public_id != second.public_id
    for address in (first.pk, second.pk, "not-a-uuid", uuid.uuid4(), f"{first.public_id}x"):
        assert_problem(alice.get(f"/api/orders/{address}"), 404, "not-found")
        assert alice.get(f"/orders/{address}").status_code == 404
    assert_problem(alice.get("/api/orders/a/b"), 404, "not-found")  # no route at all


def test_a_users_order_follows_the_user_to_another_session_and_no_one_else():
    fresh_shop()
    dave = get_user_model().objects.create_user("dave", password="pw")
    laptop, phone = Client(), Client()
    laptop.force_login(dave)
    phone.force_login(dave)
    order = place(laptop)
    assert (order.user, order.shopper) == (dave, "")
    assert_shown_to(phone, order)
    assert_hidden_from(user_client("erin"), order)
    assert_hidden_from(shopper(), order)


def test_a_shopper_who_logs_in_keeps_the_orders_placed_before():
    fresh_shop()
    client = shopper()
    before = place(client)
    client.force_login(get_user_model().objects.create_user("frank", password="pw"))
    after = place(client)
    assert (before.user, after.user.username) == (None, "frank")
    assert_shown_to(client, before)
    assert_shown_to(client, after)
    client.logout()  # a new, empty session: the shopper id went with the old one
    assert_hidden_from(client, before)
    assert_hidden_from(client, after)


def test_a_client_without_a_session_cannot_check_out_and_nothing_is_written():
    fresh_shop()
    response = post_checkout(order_body("a@b.example", "orchestrated"), client=Client())
    assert_problem(response, 400, "idempotency-scope-missing")
    assert_nothing_written()


def test_x_client_id_is_not_trusted_two_shoppers_claiming_one_get_their_own_orders():
    fresh_shop()
    key, body = str(uuid.uuid4()), order_body("same@b.example", "orchestrated")
    answers = [
        post_checkout(body, key=key, client=shopper(), HTTP_X_CLIENT_ID="shared") for _ in range(2)
    ]
    assert [a.status_code for a in answers] == [202, 202]
    assert "Idempotent-Replayed" not in answers[1]
    ids = {a.json()["order"]["public_id"] for a in answers}
    assert len(ids) == 2 == Order.objects.count()
    assert IdempotencyKey.objects.filter(key=key).values("scope").distinct().count() == 2


def test_shoppers_behind_one_address_do_not_share_keys():
    fresh_shop()
    key, body = str(uuid.uuid4()), order_body("nat@b.example", "orchestrated")
    answers = [
        post_checkout(body, key=key, client=shopper(), REMOTE_ADDR="203.0.113.7") for _ in "ab"
    ]
    assert [a.status_code for a in answers] == [202, 202]
    assert "Idempotent-Replayed" not in answers[1]
    assert Order.objects.count() == 2


def test_a_retry_from_the_same_session_or_the_same_user_is_a_replay():
    fresh_shop()
    key, body = str(uuid.uuid4()), order_body("again@b.example", "orchestrated")
    client = shopper()
    first = post_checkout(body, key=key, client=client)
    again = post_checkout(body, key=key, client=client)
    assert (again["Idempotent-Replayed"], again.content) == ("true", first.content)
    gina = get_user_model().objects.create_user("gina", password="pw")
    desktop, tablet = Client(), Client()
    desktop.force_login(gina)
    tablet.force_login(gina)
    mine = post_checkout(body, key=key, client=desktop)
    assert mine.status_code == 202 and "Idempotent-Replayed" not in mine
    assert post_checkout(body, key=key, client=tablet).content == mine.content
    assert Order.objects.count() == 2
