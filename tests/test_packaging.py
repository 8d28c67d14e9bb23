"""A normal install is enough: the wheel carries the Alembic scripts, and `bertpt admin migrate` run from
the unpacked wheel, outside the repository, brings a new database to the head revision."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "migrations"
# What the Dockerfile copies before `pip install .`: all a build needs.
BUILD_INPUTS = ("pyproject.toml", "README.md", "app", "worker", "migrations")

# Prints where the packages came from (stdout, one JSON line), then runs the `bertpt` entry point.
PROBE = """\
import json, sys
import app, migrations, worker
print(json.dumps({m.__name__: m.__file__ for m in (app, migrations, worker)}), flush=True)
from worker.cli import main
main()
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip install .` would install, built from a fresh copy of the sources: an in-tree build
    would write build/ into the shared working tree, and setuptools' build/lib keeps files from earlier
    builds (a deleted revision would still be shipped)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        # Without build isolation: the venv's setuptools (the dev extra), no download from the index.
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet"),
            *("--wheel-dir", str(out), str(source)),
        ],
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (built,) = out.glob("bertpt-*.whl")
    return built


def test_wheel_carries_every_migration(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    revisions = sorted(path.name for path in (MIGRATIONS / "versions").glob("*.py"))
    expected = {"migrations/__init__.py", "migrations/env.py", "migrations/script.py.mako"}
    expected |= {f"migrations/versions/{name}" for name in revisions}
    assert "0001_initial_schema.py" in revisions
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}"


def test_wheel_carries_the_dashboard(wheel: Path) -> None:
    """The page and its files are package data, not modules: an installed API serves /ui/ with them."""
    names = set(zipfile.ZipFile(wheel).namelist())
    static = sorted(path.name for path in (REPO / "app" / "ui" / "static").iterdir())
    missing = sorted({f"app/ui/static/{name}" for name in static} - names)
    assert "index.html" in static and not missing, f"the wheel lacks {missing}"


def test_unpacked_wheel_migrates_from_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    database = tmp_path / "x.db"
    # The venv's dependencies, but bertpt only from the unpacked wheel: PYTHONPATH comes before
    # site-packages and before the editable install's finder, and no BERTPT_* setting leaks in.
    env = {name: value for name, value in os.environ.items() if not name.startswith(("BERTPT_", "PYTHON"))}
    env |= {"PYTHONPATH": str(site), "BERTPT_DATABASE_URL": f"sqlite:///{database}"}

    migrate = subprocess.run(
        [sys.executable, "-c", PROBE, "admin", "migrate"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    origins = json.loads(migrate.stdout.splitlines()[0])
    assert set(origins) == {"app", "migrations", "worker"}
    for package, file in origins.items():
        assert Path(file).is_relative_to(site), f"{package} imported from {file}, not the wheel"
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        versions = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
    assert {"runs", "alembic_version"} <= tables
    assert versions == [ScriptDirectory(str(MIGRATIONS)).get_current_head()]
