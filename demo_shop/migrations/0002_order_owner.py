"""Orders get an owner (a user, or an anonymous shopper's session) and a public id.

The public id is unique, so it is added in three steps (Django's recipe for a unique
field on a table that has rows): nullable, one fresh UUID per existing row, then
unique and required. Orders placed before this migration have no owner, so nobody
sees them through the API or the pages; the admin still does.
"""

import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def give_each_order_a_public_id(apps, schema_editor):
    Order = apps.get_model("demo_shop", "Order")
    db = schema_editor.connection.alias
    for pk in Order.objects.using(db).filter(public_id=None).values_list("pk", flat=True):
        Order.objects.using(db).filter(pk=pk).update(public_id=uuid.uuid4())


class Migration(migrations.Migration):

    dependencies = [
        ("demo_shop", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="order",
            name="public_id",
            field=models.UUIDField(null=True, editable=False),
        ),
        migrations.RunPython(give_each_order_a_public_id, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name="order",
            name="public_id",
            field=models.UUIDField(default=uuid.uuid4, editable=False, unique=True),
        ),
        migrations.AddField(
            model_name="order",
            name="user",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="shop_orders",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="order",
            name="shopper",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
    ]
