"""The revisions, shipped in the wheel with ``migrations``. Alembic loads them by path, not by import."""
