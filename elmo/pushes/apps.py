from django.apps import AppConfig


class PushesConfig(AppConfig):
    name = "elmo.pushes"
    label = "pushes"
    verbose_name = "Pushes: clones and pushlog ingestion"
