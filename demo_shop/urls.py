from django.contrib import admin
from django.urls import path
from drf_spectacular.views import SpectacularJSONAPIView

from . import api, views

urlpatterns = [
    path("", views.products_page, name="shop-products"),
    path("orders/<str:public_id>", views.order_page, name="shop-order"),
    path("api/checkout", api.Checkout.as_view(), name="shop-checkout"),
    path("api/orders/<str:public_id>", api.OrderStatus.as_view(), name="shop-order-api"),
    path("api/session", api.Session.as_view(), name="shop-session"),
    path("api/schema", SpectacularJSONAPIView.as_view(), name="shop-schema"),
    path("admin/", admin.site.urls),
]

handler400 = "demo_shop.views.bad_request"
handler404 = "demo_shop.views.not_found"
handler500 = "demo_shop.views.crashed"
