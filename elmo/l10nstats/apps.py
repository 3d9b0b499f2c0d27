from django.apps import AppConfig


class L10nstatsConfig(AppConfig):
    name = "elmo.l10nstats"
    label = "l10nstats"
    verbose_name = "L10n stats: compare-locales comparisons"
