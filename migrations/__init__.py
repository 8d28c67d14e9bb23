"""The Alembic scripts, a package so that the wheel carries them: ``app.db.upgrade_database`` (``bertpt admin
migrate``, ``bertpt serve``) finds them here in any install. Nothing imports ``env.py``; Alembic runs it."""
