"""Replay of a general corpus (worker/pretraining/replay.py, and run_pretraining's use of it): the requested
share of every epoch, spread evenly, seeded, and resume-exact on a tiny BERT."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import tiny_run_hyperparameters, write_documents
from worker.pretraining.collator import PretrainingCollator
from worker.pretraining.engine import run_pretraining
from worker.pretraining.hyperparameters import HyperparameterError, Hyperparameters, load_hyperparameters
from worker.pretraining.layout import CHECKPOINT_MANIFEST
from worker.pretraining.records import MetricsRecord, Progress, TrainingRecord, TrainingStarted
from worker.pretraining.replay import ReplayMixingSampler, ReplayMixture
from worker.pretraining.run_checkpoints import ResumeError, read_json, resume_mismatches


class _Split:
    """A stand-in for a prepared split: instances of the given lengths."""

    def __init__(self, lengths: np.ndarray):
        self.lengths = np.asarray(lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "input_ids": np.zeros(self.lengths[index], dtype=np.int64)}


def _split(size: int, seed: int) -> _Split:
    return _Split(np.random.default_rng(seed).integers(8, 128, size))


# --------------------------------------------------------------------------------------------------
# The order of an epoch (no training)


@pytest.mark.parametrize(
    ("domain", "pool", "ratio", "batch"),
    [(1000, 300, 0.25, 32), (1000, 40, 0.25, 8), (97, 500, 0.05, 8), (400, 5000, 0.9, 16)],
)
def test_every_epoch_replays_the_share_evenly_without_replacement(
    domain: int, pool: int, ratio: float, batch: int
) -> None:
    per_epoch = Hyperparameters(replay_ratio=ratio).replay_instances(domain)
    assert per_epoch == round(domain * ratio / (1 - ratio))
    mixture = ReplayMixture(_split(domain, 1), _split(pool, 2), replay_per_epoch=per_epoch, seed=5)
    sampler = ReplayMixingSampler(mixture, batch, seed=5)
    total = domain + per_epoch
    window = math.ceil(total / per_epoch)
    stream: list[int] = []  # the replay split's instances, epoch after epoch
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        orders.append(order)
        sources = [mixture[i]["source"] for i in order]
        replayed = np.array([s == "replay" for s in sources])
        assert len(order) == len(mixture) == total
        assert replayed.sum() == per_epoch  # exactly ratio of the epoch, counted from the instances
        assert replayed.sum() / total == pytest.approx(ratio, abs=1 / total)
        assert sorted(i for i in order if mixture.source(i) == "domain") == list(range(domain))
        # Spread evenly: every window of ceil(N / R) consecutive instances holds replay, in every batch
        # position of the epoch (not all at the end).
        assert np.convolve(replayed, np.ones(window, dtype=int), "valid").min() >= 1
        assert replayed[: total // 2].sum() == pytest.approx(per_epoch / 2, abs=1)
        assert list(sampler) == order  # a pure function of (seed, epoch)
        fresh = ReplayMixingSampler(mixture, batch, seed=5)  # a resumed run's
        fresh.set_epoch(epoch)
        assert list(fresh) == order
        assert sorted(i for i in order if i >= domain) == mixture.epoch_replay(epoch).tolist()
        stream += mixture.replay_split_indices(mixture.epoch_replay(epoch)).tolist()
    assert orders[0] != orders[1]
    # Without replacement: the replay split is used whole before any of its instances comes back.
    for start in range(0, len(stream) - pool + 1, pool):
        assert sorted(stream[start : start + pool]) == list(range(pool))
    if len(stream) < pool:
        assert len(set(stream)) == len(stream)
    # Another seed, another order.
    other = ReplayMixingSampler(
        ReplayMixture(_split(domain, 1), _split(pool, 2), replay_per_epoch=per_epoch, seed=6), batch, seed=6
    )
    assert list(other) != orders[0]


def test_batches_stay_length_grouped_with_replay() -> None:
    domain, replay = _split(2000, 1), _split(2000, 2)
    mixture = ReplayMixture(domain, replay, replay_per_epoch=500, seed=5)
    sampler = ReplayMixingSampler(mixture, 16, seed=5)
    batches = [b for b in sampler.batches() if len(b) == 16]
    spread = np.mean([np.ptp(mixture.lengths_of(b)) for b in batches])
    every = np.arange(len(mixture))
    shuffled = np.mean(
        [
            np.ptp(mixture.lengths_of(b))
            for b in np.array_split(np.random.default_rng(0).permutation(every), 156)
        ]
    )
    assert spread < shuffled / 4
    assert all(0 < sum(mixture.source(int(i)) == "replay" for i in b) <= 4 for b in batches)  # 16 * 0.2


def test_a_replay_instance_is_new_to_the_masks_each_time_it_comes_back() -> None:
    mixture = ReplayMixture(_split(10, 1), _split(3, 2), replay_per_epoch=5, seed=5)
    items = [mixture[i] for i in range(10, 10 + 6)]  # two passes over the 3 replay instances
    assert [item["source"] for item in items] == ["replay"] * 6
    assert len({item["index"] for item in items}) == 6  # the mask key (seed, epoch, index) differs
    assert sorted(len(item["input_ids"]) for item in items[:3]) == sorted(mixture.replay.lengths.tolist())
    assert mixture[3]["source"] == "domain" and mixture[3]["index"] == 3
    with pytest.raises(ValueError, match="at least 1"):
        ReplayMixture(_split(10, 1), _split(3, 2), replay_per_epoch=0, seed=5)


# --------------------------------------------------------------------------------------------------
# Validation


def test_replay_ratio_and_the_replay_corpus_go_together(tmp_path: Path) -> None:
    with pytest.raises(HyperparameterError, match="replay_ratio"):
        load_hyperparameters({"replay_ratio": 0.95})
    assert Hyperparameters().replay_instances(1000) == 0
    assert Hyperparameters(replay_ratio=0.05).replay_instances(3) == 1  # at least one, when asked
    corpus = write_documents(tmp_path / "c.txt", [["One sentence here.", "Another one there."]] * 2)
    missing_base = tmp_path / "no-such-model"  # refused before the base model is looked at
    with pytest.raises(
        HyperparameterError, match=r"replay_ratio: replay_ratio=0.25 .* no replay corpus"
    ) as e:
        run_pretraining(missing_base, corpus, tmp_path / "a", {"replay_ratio": 0.25})
    assert e.value.errors[0][0] == "replay_ratio"
    with pytest.raises(HyperparameterError, match="replay_ratio is 0, so it would be ignored") as e:
        run_pretraining(missing_base, corpus, tmp_path / "b", {}, replay_corpus=corpus)
    assert e.value.errors[0][0] == "replay_corpus"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_checkpoint_written_before_replay_existed_resumes_without_it() -> None:
    def run(h: Hyperparameters) -> dict[str, Any]:
        return {"hyperparameters": h.model_dump(mode="json"), "corpus_sha256": "c", "data_key": "d"}

    older = run(Hyperparameters())
    del older["hyperparameters"]["replay_ratio"]  # a checkpoint of an earlier bertpt
    assert resume_mismatches({"run": older}, run(Hyperparameters())) == []
    replaying = {
        **run(Hyperparameters(replay_ratio=0.05)),
        "replay_corpus_sha256": "r",
        "replay_data_key": "k",
    }
    problems = resume_mismatches({"run": older}, replaying)
    assert any("replay corpus differs" in p for p in problems)
    assert any(p.startswith("hyperparameter replay_ratio") for p in problems)


# --------------------------------------------------------------------------------------------------
# Runs of the tiny BERT


@pytest.fixture(scope="module")
def general_corpus(tmp_path_factory: pytest.TempPathFactory, documents: list[list[str]]) -> Path:
    return write_documents(tmp_path_factory.mktemp("general") / "general.txt", documents[600:660])


Batch = list[tuple[str, int]]


@pytest.fixture
def trained_batches(monkeypatch: pytest.MonkeyPatch) -> list[Batch]:
    """The training batches the collator makes, in order, as (source, index) of their instances
    (evaluation batches, whose instances carry no source, are left out)."""
    seen: list[Batch] = []
    collate = PretrainingCollator.__call__

    def recording(self: PretrainingCollator, instances: Any) -> Any:
        if "source" in instances[0]:
            seen.append([(i["source"], int(i["index"])) for i in instances])
        return collate(self, instances)

    monkeypatch.setattr(PretrainingCollator, "__call__", recording)
    return seen


@pytest.mark.slow  # trains the tiny BERT
def test_a_run_replays_the_share_and_resumes_exactly(
    tmp_path: Path,
    tiny_bert_dir: Path,
    tiny_corpus: Path,
    general_corpus: Path,
    cache_dir: Path,
    trained_batches: list[Batch],
) -> None:
    h = tiny_run_hyperparameters(
        max_steps=12, batch_size=32, eval_every_steps=0, checkpoint_every_steps=0, replay_ratio=0.25
    )
    straight: list[TrainingRecord] = []
    result = run_pretraining(
        tiny_bert_dir,
        tiny_corpus,
        tmp_path / "a",
        h,
        replay_corpus=general_corpus,
        cache_dir=cache_dir,
        sink=straight.append,
    )
    (started,) = [r for r in straight if isinstance(r, TrainingStarted)]
    replay = started.data.replay
    assert replay is not None and result.replay == replay and not replay.held_out_for_reference
    domain = replay.domain_instances_per_epoch
    assert started.replay_instances == replay.instances_per_epoch == round(domain * 0.25 / 0.75)
    assert started.train_instances == domain + replay.instances_per_epoch
    assert started.max_steps == 12 > math.ceil(started.train_instances / 32)  # crosses an epoch
    # The first epoch, as trained: exactly the share, from the instances' source.
    per_epoch = math.ceil(started.train_instances / 32)
    epoch = [instance for batch in trained_batches[:per_epoch] for instance in batch]
    assert len(epoch) == started.train_instances
    assert sum(source == "replay" for source, _ in epoch) == replay.instances_per_epoch
    assert sorted(index for source, index in epoch if source == "domain") == list(range(domain))
    assert replay.instances > replay.instances_per_epoch  # the general corpus is all replay material
    manifest = read_json(tmp_path / "a" / "model" / "bertpt_manifest.json") or {}
    assert manifest["run"]["replay_corpus_sha256"] == replay.corpus_sha256
    assert manifest["replay"]["instances_per_epoch"] == replay.instances_per_epoch
    uninterrupted = trained_batches[:12]

    trained_batches.clear()
    first: list[TrainingRecord] = []
    stopped = run_pretraining(
        tiny_bert_dir,
        tiny_corpus,
        tmp_path / "b",
        h,
        replay_corpus=general_corpus,
        cache_dir=cache_dir,
        sink=first.append,
        should_stop=lambda: [r.step for r in first if isinstance(r, Progress)][-1] >= 10,
    )
    assert stopped.status == "cancelled" and stopped.steps == 10 and stopped.checkpoint_path is not None
    position = (read_json(stopped.checkpoint_path / CHECKPOINT_MANIFEST) or {})["data_position"]
    assert position == {"epoch": 1, "optimizer_steps_into_epoch": 10 - per_epoch}  # within the 2nd epoch
    before = trained_batches[:10]  # (the data loader may have fetched one more batch)
    with pytest.raises(ResumeError, match="replay corpus differs"):
        run_pretraining(
            tiny_bert_dir, tiny_corpus, tmp_path / "b", h, replay_corpus=tiny_corpus, cache_dir=cache_dir
        )
    trained_batches.clear()
    second: list[TrainingRecord] = []
    run_pretraining(
        tiny_bert_dir,
        tiny_corpus,
        tmp_path / "b",
        h,
        replay_corpus=general_corpus,
        cache_dir=cache_dir,
        sink=second.append,
    )
    assert before + trained_batches[:2] == uninterrupted  # the same instances in the same batches
    losses = {
        r.step: r.metrics.loss
        for r in [*first, *second]
        if isinstance(r, MetricsRecord) and r.split == "train"
    }
    for r in straight:
        if isinstance(r, MetricsRecord) and r.split == "train":
            assert losses[r.step] == pytest.approx(r.metrics.loss, rel=1e-4, abs=1e-5), r.step


@pytest.mark.slow  # trains the tiny BERT
def test_the_reference_corpus_replayed_is_evaluated_on_its_held_out_part_only(
    tmp_path: Path,
    tiny_bert_dir: Path,
    tiny_corpus: Path,
    general_corpus: Path,
    cache_dir: Path,
    trained_batches: list[Batch],
) -> None:
    same_text = shutil.copy(general_corpus, tmp_path / "reference.txt")  # the same bytes: the same corpus
    records: list[TrainingRecord] = []
    result = run_pretraining(
        tiny_bert_dir,
        tiny_corpus,
        tmp_path / "run",
        tiny_run_hyperparameters(
            max_steps=2, eval_every_steps=0, checkpoint_every_steps=0, replay_ratio=0.05
        ),
        reference_corpus=same_text,
        replay_corpus=general_corpus,
        cache_dir=cache_dir,
        sink=records.append,
    )
    (started,) = [r for r in records if isinstance(r, TrainingStarted)]
    replay = started.data.replay
    assert replay is not None and replay.held_out_for_reference and result.replay == replay
    manifest = read_json(tmp_path / "run" / "model" / "bertpt_manifest.json") or {}
    # One cache entry: the held-out documents are the reference split, the others the replay material.
    assert manifest["run"]["reference_data_key"] == manifest["run"]["replay_data_key"] == replay.data_key
    entry = read_json(cache_dir / replay.data_key / "manifest.json") or {}
    held_out, replayed = entry["splits"]["eval"], entry["splits"]["train"]
    assert (
        started.eval_splits["reference"] == held_out["instances"]
        and replayed["instances"] == replay.instances
    )
    assert held_out["documents"] + replayed["documents"] == 60  # every document is one or the other
    assert "reference" in result.final_metrics and "reference" in result.baseline_metrics
    replayed_indices = {i for batch in trained_batches for source, i in batch if source == "replay"}
    assert replayed_indices and all(i >= replay.domain_instances_per_epoch for i in replayed_indices)
