from django.urls import path

from elmo.l10nstats import views

app_name = "l10nstats"
urlpatterns = [
    path("", views.comparisons, name="comparisons"),
    path("<int:run_id>/", views.comparison, name="comparison"),
]
