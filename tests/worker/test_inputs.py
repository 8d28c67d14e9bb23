"""A worker locates a labelled dataset's files from its row only, and refuses another tenant's."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.models import Dataset
from app.storage import LocalStorage
from app.storage.keys import dataset_file_key
from worker.inputs import InputError, dataset_paths


def add_dataset(session: Session, storage: LocalStorage, tenant_id: str, *, with_test: bool) -> Dataset:
    dataset_id = "ds_with_test" if with_test else "ds_plain"
    dataset = Dataset(
        id=dataset_id,
        tenant_id=tenant_id,
        name="d",
        sha256=("b" if with_test else "a") * 64,
        filename="mine.tsv",
        format="tsv",
        storage_key=dataset_file_key(dataset_id, "train", "tsv"),
        bytes=1,
        examples=8,
        test_filename="mine-test.csv" if with_test else None,
        test_format="csv" if with_test else None,
        test_storage_key=dataset_file_key(dataset_id, "test", "csv") if with_test else None,
        labels=[],
        has_text_pair=False,
    )
    session.add(dataset)
    session.commit()
    for key in (dataset.storage_key, dataset.test_storage_key):
        if key is not None:
            storage.local_path(key).parent.mkdir(parents=True, exist_ok=True)
            storage.local_path(key).write_text("text\tlabel\n")
    return dataset


def test_dataset_paths(session: Session, storage: LocalStorage, make_tenant: Any) -> None:
    alice, bob = make_tenant("alice").tenant, make_tenant("bob").tenant
    plain = add_dataset(session, storage, alice.id, with_test=False)
    assert dataset_paths(session, storage, plain.id, tenant_id=alice.id) == (
        storage.root / "datasets/ds_plain/train.tsv",
        None,
    )
    paired = add_dataset(session, storage, alice.id, with_test=True)
    train, test = dataset_paths(session, storage, paired.id, tenant_id=alice.id)
    assert train == storage.root / "datasets/ds_with_test/train.tsv"
    assert test == storage.root / "datasets/ds_with_test/test.csv" and test.read_text() == "text\tlabel\n"
    with pytest.raises(InputError, match="no longer exists"):
        dataset_paths(session, storage, paired.id, tenant_id=bob.id)
    with pytest.raises(InputError, match="no longer exists"):
        dataset_paths(session, storage, None, tenant_id=alice.id)
    test.unlink()
    with pytest.raises(InputError, match="missing from storage"):
        dataset_paths(session, storage, paired.id, tenant_id=alice.id)
