"""The confirmation e-mail (console backend in the demo settings)."""

from __future__ import annotations

import logging

from django.core.mail import send_mail

from .models import Order

logger = logging.getLogger("demo_shop.notifications")


def send_confirmation(order_id: int) -> None:
    order = Order.objects.prefetch_related("lines__product").get(pk=order_id)
    lines = "\n".join(f"  {line.quantity} x {line.product.name}" for line in order.lines.all())
    try:
        send_mail(
            subject=f"Your order {order.pk} is confirmed",
            message=f"Thank you! We are shipping:\n{lines}\nTotal: {order.total_cents / 100:.2f}",
            from_email="shop@example.com",
            recipient_list=[order.customer],
        )
    except Exception:  # the order stands; an e-mail is not worth failing it for
        logger.exception("could not send the confirmation e-mail of order %s", order_id)
