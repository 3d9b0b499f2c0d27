from django.apps import AppConfig


class ShardworkerConfig(AppConfig):
    name = "shardworker"
    verbose_name = "Pulse worker"
