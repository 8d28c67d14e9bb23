"""Base-model specs: every form parses and formats back to itself; bad forms are named."""

from __future__ import annotations

import pytest

from app.base_models.spec import BaseModelSpec, BaseModelSpecError


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("minilm-l6-h384-uncased", BaseModelSpec("builtin", "minilm-l6-h384-uncased")),
        ("hf:google-bert/bert-base-uncased", BaseModelSpec.hub("google-bert/bert-base-uncased")),
        ("hf:bert-base-uncased", BaseModelSpec.hub("bert-base-uncased")),
        (
            "checkpoint:ckpt_4fHq1sZt0yP8wXbN2cVmK9aR",
            BaseModelSpec.checkpoint("ckpt_4fHq1sZt0yP8wXbN2cVmK9aR"),
        ),
        ("run:run_Jq8sT2vX0bN4mC6z", BaseModelSpec.run("run_Jq8sT2vX0bN4mC6z")),
        ("run:run_Jq8sT2vX0bN4mC6z@120", BaseModelSpec.run("run_Jq8sT2vX0bN4mC6z", 120)),
    ],
)
def test_parse_and_format(text: str, spec: BaseModelSpec) -> None:
    assert BaseModelSpec.parse(f"  {text} ") == spec
    assert str(spec) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("hf:not a repo", "not a Hugging Face repository id"),
        ("hf:" + "a" * 97, "not a Hugging Face repository id"),
        ("checkpoint:../etc", "use checkpoint:<id>"),
        ("run:run_x@abc", "use run:<id> or run:<id>@<step>"),
        ("run:@5", "use run:<id>"),
        ("s3:bucket/model", "unknown base model"),
    ],
)
def test_bad_specs_are_named(text: str, message: str) -> None:
    with pytest.raises(BaseModelSpecError, match=message):
        BaseModelSpec.parse(text)


def test_the_step_prefix_matches_every_step_of_the_run() -> None:
    prefix = BaseModelSpec.run_step_prefix("run_a")
    assert str(BaseModelSpec.run("run_a", 5)).startswith(prefix)
    assert not str(BaseModelSpec.run("run_a")).startswith(prefix)
    assert not str(BaseModelSpec.run("run_ab", 5)).startswith(prefix)
