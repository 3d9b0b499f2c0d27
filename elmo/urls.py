"""URL routes of the elmo site: the admin and the comparisons."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("comparisons/", include("elmo.l10nstats.urls")),
]
