"""Admin page for dead letters."""

from django.contrib import admin

from shardworker.models import DeadLetter


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ("created", "source", "routing_key", "attempts", "reason")
    list_filter = ("source",)
    search_fields = ("routing_key", "repository", "reason", "message_id")
    readonly_fields = ("created", "updated")
