"""Fixtures of the downstream-comparison tests: a labelled topic task written at test time over the words of
the synthetic corpus (the tiny BERTs' tokenizer knows every one), the two tiny BERTs as models to compare,
settings under which a randomly initialized tiny BERT learns that task in seconds, and one CPU thread."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.synthetic import FUNCTION_WORDS, WHOLE_WORDS, synthetic_documents, synthetic_vocabulary
from worker.evaluation.labelled import LabelledExample, stratified_split
from worker.evaluation.settings import EvaluationHyperparameters

TOPICS = ("alpha", "beta", "gamma")
PER_TOPIC = 40
TOPIC_WORDS = 10

# A randomly initialized tiny BERT needs a larger learning rate than the defaults (made for pre-trained
# checkpoints) and some 80 steps to learn the topics: about 0.9 accuracy against a chance of 1/3.
TINY_FINETUNE = EvaluationHyperparameters(learning_rate=5e-3, batch_size=8, min_train_steps=80)
# The probe with a small grid: 3 folds, 4 values of C.
TINY_PROBE = EvaluationHyperparameters(probe_cv_folds=3, probe_cs=4)


def topic_examples(per_topic: int = PER_TOPIC, seed: int = 0) -> list[LabelledExample]:
    """Sentences of 6 to 14 words labelled by topic: about 40% of the words are one of the topic's
    TOPIC_WORDS words, the others function words and words common to every topic. Shuffled."""
    content = synthetic_vocabulary(synthetic_documents())[-WHOLE_WORDS:]  # the whole-word content tokens
    topic_words = {topic: content[i * TOPIC_WORDS : (i + 1) * TOPIC_WORDS] for i, topic in enumerate(TOPICS)}
    common = content[200:600]
    rng = random.Random(seed)
    examples = []
    for topic in TOPICS:
        for _ in range(per_topic):
            words = []
            for _ in range(rng.randint(6, 14)):
                draw = rng.random()
                pool = FUNCTION_WORDS if draw < 0.3 else topic_words[topic] if draw < 0.7 else common
                words.append(rng.choice(pool))
            examples.append(LabelledExample(text=" ".join(words).capitalize() + ".", label=topic))
    rng.shuffle(examples)
    return examples


@pytest.fixture(scope="session")
def topic_split() -> tuple[list[LabelledExample], list[LabelledExample]]:
    """(train, test): 90 and 30 examples, stratified."""
    return stratified_split(topic_examples(), 0.25, seed=0)


@pytest.fixture(scope="session")
def two_models(tiny_bert_dir: Path, tiny_encoder_dir: Path) -> list[Any]:
    """The tiny BertForPreTraining (the baseline) and the tiny bare encoder (no pooler), initialized with
    different seeds."""
    from worker.evaluation.compare import ModelToEvaluate

    return [ModelToEvaluate("pretraining-heads", tiny_bert_dir), ModelToEvaluate("encoder", tiny_encoder_dir)]


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch and one BLAS thread while a module runs: tiny models gain nothing from more, and on a
    busy 2-core machine threads waiting for each other make each step many times slower."""
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(previous)
