from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("", views.products_page, name="shop-products"),
    path("orders/<int:pk>", views.order_page, name="shop-order"),
    path("api/checkout", views.checkout, name="shop-checkout"),
    path("api/orders/<int:pk>", views.order_status, name="shop-order-api"),
    path("admin/", admin.site.urls),
]
