from django.apps import AppConfig


class LifeConfig(AppConfig):
    name = "elmo.life"
    label = "life"
    verbose_name = "Life: locales, repositories, pushes"
