"""What the worker keeps besides elmo's data: the dead letters."""

from django.db import models


class DeadLetter(models.Model):
    """A message the worker could not process, kept for an operator.

    Fields: message_id (digest of exchange, routing key and body), source,
    exchange, routing_key, repository (when known), body (raw bytes),
    content_type, headers, reason, attempts, created, updated.
    """

    message_id = models.CharField(max_length=64, unique=True)
    source = models.CharField(max_length=32, db_index=True)
    exchange = models.CharField(max_length=255)
    routing_key = models.CharField(max_length=255)
    repository = models.CharField(max_length=255, blank=True, default="", db_index=True)
    body = models.BinaryField()
    content_type = models.CharField(max_length=100, blank=True, default="")
    content_encoding = models.CharField(max_length=100, blank=True, default="")
    headers = models.JSONField(default=dict, blank=True)
    reason = models.TextField()
    attempts = models.PositiveIntegerField(default=1)
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.source} {self.routing_key} {self.message_id[:12]}"
