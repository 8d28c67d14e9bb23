"""PretrainingTrainer: the run state checkpoints carry across attempts, and the optimizer's weight decay."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from worker.pretraining.trainer import PretrainingTrainer, RunState

# The "state" of a bertpt 0.1 checkpoint manifest (mlm_*/nsp_* names, the step repeated, {} before any log).
STATE_0_1 = {
    "samples_seen": 96,
    "tokens_seen": 4000,
    "runtime_seconds": 12.5,
    "baseline": {"eval": {"masked_lm_loss": 8.0, "masked_lm_accuracy": 0.01, "perplexity": 2981.0}},
    "last_eval": {},
    "last_eval_step": None,
    "last_train": {
        "loss": 7.5,
        "mlm_loss": 7.0,
        "mlm_accuracy": 0.05,
        "nsp_loss": 0.5,
        "nsp_accuracy": 0.6,
        "learning_rate": 1e-4,
        "grad_norm": 2.0,
        "tokens_per_second": 300.0,
        "samples_seen": 96,
        "epoch": 1.5,
        "step": 12,
    },
}


def test_a_checkpoint_of_bertpt_0_1_resumes() -> None:
    state = RunState.from_manifest({"state": STATE_0_1})
    assert state.last_train is not None
    assert (state.last_train.masked_lm_loss, state.last_train.next_sentence_accuracy) == (7.0, 0.6)
    assert state.baseline["eval"].masked_lm_loss == 8.0 and state.samples_seen == 96
    assert RunState.from_manifest({"state": {**STATE_0_1, "last_train": {}}}).last_train is None


def test_the_state_round_trips_through_a_manifest() -> None:
    state = RunState.from_manifest({"state": STATE_0_1})
    assert RunState.from_manifest({"state": state.model_dump(mode="json")}) == state


@pytest.mark.slow  # prepares a corpus and builds a trainer on the tiny BERT
def test_weight_decay_spares_layernorm_and_bias(make_trainer: Callable[[], PretrainingTrainer]) -> None:
    trainer = make_trainer()
    optimizer = trainer.create_optimizer()
    assert trainer.model is not None
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    spared = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.01, 0.0}
    assert decayed and spared and not decayed & spared
    assert decayed | spared == set(names.values())
    assert all("LayerNorm" in n or n.endswith("bias") for n in spared)
    assert not any("LayerNorm" in n or n.endswith("bias") for n in decayed)
    assert "bert.embeddings.word_embeddings.weight" in decayed  # also the tied MLM decoder
