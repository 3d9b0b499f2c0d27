"""Admin pages for the life models: how operators register forests and
repositories by hand."""

from django.contrib import admin

from elmo.life import models


@admin.register(models.Locale)
class LocaleAdmin(admin.ModelAdmin):
    list_display = ("code", "name")
    search_fields = ("code", "name")


@admin.register(models.Forest)
class ForestAdmin(admin.ModelAdmin):
    list_display = ("name", "url", "archived")


@admin.register(models.Repository)
class RepositoryAdmin(admin.ModelAdmin):
    list_display = ("name", "forest", "locale", "archived")
    list_filter = ("forest", "archived")
    search_fields = ("name",)


@admin.register(models.Tree)
class TreeAdmin(admin.ModelAdmin):
    list_display = ("code", "l10n")


@admin.register(models.Branch)
class BranchAdmin(admin.ModelAdmin):
    list_display = ("name",)


@admin.register(models.Changeset)
class ChangesetAdmin(admin.ModelAdmin):
    list_display = ("revision", "user", "branch")
    search_fields = ("revision", "user")
    raw_id_fields = ("parents", "files", "repositories")


@admin.register(models.Push)
class PushAdmin(admin.ModelAdmin):
    list_display = ("repository", "push_id", "user", "push_date")
    list_filter = ("repository",)
    raw_id_fields = ("changesets",)
