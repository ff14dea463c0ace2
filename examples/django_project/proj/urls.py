from django.contrib import admin
from django.urls import include, path
from shop import views

urlpatterns = [
    path("taskpipe/", include("taskpipe.contrib.django.urls")),  # the dashboard (staff only)
    path("admin/", admin.site.urls),
    path("orders", views.create_order),
    path("orders/<int:pk>", views.order),
    path("jobs/<str:job_id>", views.job),
]
