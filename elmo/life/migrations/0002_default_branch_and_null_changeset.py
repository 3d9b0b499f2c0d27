"""Create the `default` branch as row 1 and the null changeset 000...0,
which root changesets name as their parent."""

from django.db import migrations

NULL_REVISION = "0" * 40


def create_rows(apps, schema_editor):
    Branch = apps.get_model("life", "Branch")
    Changeset = apps.get_model("life", "Changeset")
    default, _ = Branch.objects.get_or_create(id=1, defaults={"name": "default"})
    Changeset.objects.get_or_create(
        revision=NULL_REVISION,
        defaults={"user": "", "description": "", "branch": default},
    )


def remove_rows(apps, schema_editor):
    Changeset = apps.get_model("life", "Changeset")
    Changeset.objects.filter(revision=NULL_REVISION).delete()


class Migration(migrations.Migration):
    dependencies = [("life", "0001_initial")]
    operations = [migrations.RunPython(create_rows, remove_rows)]
