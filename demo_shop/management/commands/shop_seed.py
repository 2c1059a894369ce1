"""Stock the demo shop's catalogue (docker compose runs it after migrating)."""

from django.core.management.base import BaseCommand

from demo_shop import seed
from demo_shop.models import Product


class Command(BaseCommand):
    help = "Create the demo catalogue if the shop has none; optionally arm the demo's faults."

    def add_arguments(self, parser):
        parser.add_argument("--reset", action="store_true", help="delete orders, restock")
        parser.add_argument("--faults", action="store_true", help="inject the demo's failures")

    def handle(self, *args, reset: bool, faults: bool, **options):
        if reset or not Product.objects.exists():
            seed.reset()
            self.stdout.write(f"catalogue stocked: {Product.objects.count()} products")
        if faults:
            seed.arm_demo_faults()
            self.stdout.write(f"{len(seed.DEMO_FAULTS)} fault rules armed")
