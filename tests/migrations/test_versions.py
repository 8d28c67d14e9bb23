"""The migrations: `alembic upgrade head` builds what the models declare; from an empty database, 0003
renames the training metrics to BERT's names (stored points and metrics JSON), and its downgrade undoes it."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from app.db import alembic_config, create_db_engine, upgrade_database
from app.models import Base

OLD_TRAIN = {
    "loss": 7.0,
    "mlm_loss": 6.5,
    "mlm_accuracy": 0.1,
    "nsp_loss": 0.5,
    "nsp_accuracy": 0.7,
    "step": 3,
}
NEW_TRAIN = {
    "loss": 7.0,
    "masked_lm_loss": 6.5,
    "masked_lm_accuracy": 0.1,
    "next_sentence_loss": 0.5,
    "next_sentence_accuracy": 0.7,
    "step": 3,
}
EVAL = {"masked_lm_loss": 6.0, "perplexity": 403.4, "step": 3}


def _state(engine) -> tuple[set[tuple[str, str]], dict, dict]:  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        points = {
            (split, name) for split, name in connection.execute(text("SELECT split, name FROM run_metrics"))
        }
        latest = connection.execute(text("SELECT latest FROM runs")).scalar_one()
        metrics = connection.execute(text("SELECT metrics FROM run_checkpoints")).scalar_one()
    return points, latest, metrics


RUN = (
    "INSERT INTO runs (id, tenant_id, name, status, base_model, hyperparameters, metadata, created_at, "
    "progress, latest, baseline, warnings, attempt, cancel_requested) VALUES ('run_1', 'ten_1', 'r', "
    "'running', 'x', '{}', '{}', now(), '{}', :latest, '{}', '[]', 1, false)"
)
CHECKPOINT = (
    "INSERT INTO run_checkpoints (run_id, step, created_at, metrics, size_bytes, sha256, storage_key) "
    "VALUES ('run_1', 3, now(), :metrics, 1, 'x', 'k')"
)


def _seed_0002(engine) -> None:  # type: ignore[no-untyped-def]
    """What bertpt 0.1 stored for a run that logged training metrics and kept a checkpoint."""
    by_split = json.dumps({"train": OLD_TRAIN, "eval": EVAL})
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_1', 't', now())"))
        connection.execute(text(RUN), {"latest": by_split})
        for split, name in [("train", "mlm_loss"), ("train", "nsp_accuracy"), ("train", "loss")]:
            connection.execute(
                text("INSERT INTO run_metrics VALUES ('run_1', :split, :name, 3, 1.0)"),
                {"split": split, "name": name},
            )
        connection.execute(text("INSERT INTO run_metrics VALUES ('run_1', 'eval', 'masked_lm_loss', 3, 1.0)"))
        connection.execute(text(CHECKPOINT), {"metrics": by_split})


def test_0003_renames_the_training_metrics_and_back(
    empty_database: Callable[[], AbstractContextManager[str]],
) -> None:
    with empty_database() as url:
        upgrade_database(url, "0002")
        engine = create_db_engine(url)
        try:
            _seed_0002(engine)
            upgrade_database(url, "0003")
            points, latest, metrics = _state(engine)
            assert points == {
                ("train", "masked_lm_loss"),
                ("train", "next_sentence_accuracy"),
                ("train", "loss"),
                ("eval", "masked_lm_loss"),
            }
            assert latest == metrics == {"train": NEW_TRAIN, "eval": EVAL}

            command.downgrade(alembic_config(url), "0002")
            points, latest, metrics = _state(engine)
            assert ("train", "mlm_loss") in points and ("eval", "masked_lm_loss") in points
            assert latest == metrics == {"train": OLD_TRAIN, "eval": EVAL}
        finally:
            engine.dispose()


def test_migrations_match_the_models(engine: Engine) -> None:
    """`alembic upgrade head` (run by the database fixture) builds exactly what the models declare."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(connection).get_table_names())
    assert tables >= {
        "tenants",
        "api_keys",
        "corpora",
        "datasets",
        "checkpoints",
        "runs",
        "run_metrics",
        "run_events",
        "run_checkpoints",
        "evaluations",
    }


def test_0006_creates_the_datasets_table_and_its_downgrade_drops_it(
    empty_database: Callable[[], AbstractContextManager[str]],
) -> None:
    with empty_database() as url:
        upgrade_database(url, "0006")
        engine = create_db_engine(url)
        try:
            with engine.connect() as connection:
                inspector = inspect(connection)
                assert "datasets" in inspector.get_table_names()
                assert "ix_datasets_tenant_id_created_at_id" in {
                    i["name"] for i in inspector.get_indexes("datasets")
                }
            command.downgrade(alembic_config(url), "0005")
            with engine.connect() as connection:
                assert "datasets" not in inspect(connection).get_table_names()
            upgrade_database(url, "0006")  # and up again
        finally:
            engine.dispose()


def test_0007_creates_the_evaluations_table_and_runs_downstream_and_its_downgrade_drops_them(
    empty_database: Callable[[], AbstractContextManager[str]],
) -> None:
    with empty_database() as url:
        upgrade_database(url, "0007")
        engine = create_db_engine(url)
        try:
            with engine.connect() as connection:
                inspector = inspect(connection)
                assert "evaluations" in inspector.get_table_names()
                assert "downstream" in {column["name"] for column in inspector.get_columns("runs")}
                unique = {i["name"] for i in inspector.get_indexes("evaluations") if i["unique"]}
                assert unique == {"ix_evaluations_run_id"}  # one downstream evaluation per run
            command.downgrade(alembic_config(url), "0006")
            with engine.connect() as connection:
                inspector = inspect(connection)
                assert "evaluations" not in inspector.get_table_names()
                assert "downstream" not in {column["name"] for column in inspector.get_columns("runs")}
        finally:
            engine.dispose()


def test_0010_adds_runs_resources_and_its_downgrade_drops_it(
    empty_database: Callable[[], AbstractContextManager[str]],
) -> None:
    with empty_database() as url:
        upgrade_database(url, "0010")
        engine = create_db_engine(url)
        try:
            with engine.connect() as connection:
                columns = {column["name"]: column for column in inspect(connection).get_columns("runs")}
                assert columns["resources"]["nullable"]  # NULL: a run from before, of the default class
            command.downgrade(alembic_config(url), "0009")
            with engine.connect() as connection:
                columns = {column["name"]: column for column in inspect(connection).get_columns("runs")}
                assert "resources" not in columns
            upgrade_database(url, "0010")  # and up again
        finally:
            engine.dispose()
