"""What a run costs before it runs: its optimizer steps, the tokens it trains on and the time it takes.
Torch-free: the API estimates with it (``POST /v1/runs/estimate``, a queued run's ``eta_seconds``), the
trainer counts its steps with it, and the corpus analysis (:mod:`worker.pretraining.analysis`) gives it
exact inputs.

**Steps** are counted like transformers' ``Trainer``: ``ceil(ceil(instances / batch_size) /
gradient_accumulation_steps)`` a pass (a short last accumulation still steps), times ``num_epochs``
rounded up, or ``max_steps`` (:func:`steps_per_epoch`, :func:`total_steps`). With replay, an epoch holds
the domain instances and ``Hyperparameters.replay_instances`` replayed ones (:func:`epoch_instances`).

**Instances and tokens** are exact from a corpus analysis (the real preparation). Without one they are
approximated from the counts stored with a corpus at upload (:func:`approximate_corpus`): words from its
characters (:data:`CHARACTERS_PER_WORD`), wordpieces from words (:data:`WORDPIECES_PER_WORD`), and
instances from the wordpieces an instance holds; such figures are flagged ``exact: false``.

**Time** of a run from its claim to its end (:func:`run_seconds`): ``startup + steps x seconds_per_step +
evaluation``, where

- ``seconds_per_step = tokens_per_step / tokens_per_second``; ``tokens_per_second`` is the real
  (non-padding) training throughput that workers measured on earlier runs of the same model size and
  ``max_seq_length`` (the ``tokens_per_second`` of their training metrics), else
  :func:`default_tokens_per_second`: the training FLOPs per token of Kaplan et al. 2020 over a device's
  effective FLOP/s (:data:`DEFAULT_FLOPS_PER_SECOND`);
- an evaluation pass runs forward only, a third of a training step's FLOPs (the backward pass costs twice
  the forward one): :data:`EVALUATION_SPEEDUP`;
- ``startup`` is what is neither training nor evaluating (process start, model load, data preparation,
  checkpoints, export): measured on earlier runs when there are, else :data:`DEFAULT_STARTUP_SECONDS` plus
  the preparation at :data:`PREPARATION_BYTES_PER_SECOND`.

**Utilization** of a run that trains (:func:`model_flops_utilization`, the ``mfu`` of the training
metrics): the useful FLOP/s it achieves, real tokens per second times :func:`training_flops_per_token`,
over its device's dense peak for the precision of its matrix products (:func:`peak_flops_per_second`, from
:data:`PEAK_FLOPS_PER_SECOND`); null on a CPU or a GPU that the table does not know.

The constants carry how they were chosen; ``docs/operations.md`` ("Estimates") has the table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.pretraining.hyperparameters import Hyperparameters, PreparationConfig
from worker.pretraining.records import ModelShape, RunWarning, TokenizationStats

__all__ = [
    "CHARACTERS_PER_WORD",
    "DEFAULT_FLOPS_PER_SECOND",
    "DEFAULT_MODEL_SHAPE",
    "DEFAULT_STARTUP_SECONDS",
    "EVALUATION_SPEEDUP",
    "MEAN_LENGTH_SHARE",
    "NSP_TEXT_REUSE",
    "PEAK_FLOPS_PER_SECOND",
    "PREPARATION_BYTES_PER_SECOND",
    "WORDPIECES_PER_WORD",
    "ApproximateCorpus",
    "CorpusAnalysis",
    "Device",
    "MatmulPrecision",
    "SplitFigures",
    "StepFigures",
    "approximate_corpus",
    "default_tokens_per_second",
    "epoch_instances",
    "evaluation_passes",
    "gpu_model",
    "model_flops_utilization",
    "peak_flops_per_second",
    "run_seconds",
    "step_figures",
    "steps_per_epoch",
    "total_steps",
    "training_flops_per_token",
]

Device = Literal["cpu", "cuda"]
# The number format of a training step's matrix products: bf16/fp16 autocast, or fp32 weights multiplied as
# TF32 (torch.get_float32_matmul_precision() "high" or "medium") or as full fp32 ("highest").
MatmulPrecision = Literal["bf16", "fp16", "tf32", "fp32"]

# -- the defaults, and how they were chosen ----------------------------------------------------------------

# Effective training FLOP/s of a worker, by device, used until workers have measured a run of the model size
# and sequence length. cpu: docs/benchmarks.md's training throughput on the development machine (2 cores,
# fp32): MiniLM-L6-H384 1,374 and BERT-base 207 real tokens/s at max_seq_length 128, which
# training_flops_per_token turns into 105 and 112 GFLOP/s (the model predicts their ratio, 6.6, within 7%).
# cuda: no GPU was measured; 50 TFLOP/s is 16% of an A100's dense bf16 peak (312 TFLOP/s), a utilization
# that BERT-base pre-training at sequence 128 reaches without fused kernels. Measured figures replace it after
# the first run on a GPU.
DEFAULT_FLOPS_PER_SECOND: dict[Device, float] = {"cpu": 1.1e11, "cuda": 5.0e13}
# A forward pass costs a third of a training step (forward + backward, the backward twice the forward).
EVALUATION_SPEEDUP = 3.0
# What a run spends neither training nor evaluating, by device, until earlier runs measured it: the training
# process's start (torch, transformers), the model load, checkpoints and the export; 19 s measured for the
# tiny run of the end-to-end test on the development machine (2 cores, a small corpus), rounded up. The data
# preparation comes on top (PREPARATION_BYTES_PER_SECOND), unless a corpus analysis already prepared the data.
DEFAULT_STARTUP_SECONDS: dict[Device, float] = {"cpu": 20.0, "cuda": 30.0}
# docs/benchmarks.md, data preparation (a): 52.4 MB prepared in 17.2 s on 2 cores (3.05 MB/s).
PREPARATION_BYTES_PER_SECOND = 3.0e6
# Approximating a corpus from the counts stored at upload (no tokenizer in the API). Characters per word
# (the tokenizer's words: split at whitespace and around punctuation): 5.9 for English prose (4.7 letters, a
# space, punctuation), 6.75 measured on the docstrings corpus of docs/benchmarks.md. Wordpieces per word:
# about 1.3 for general English under BERT's uncased vocabulary, 1.94 measured on those docstrings; domain
# text, the reason for continued pre-training, is in between or above.
CHARACTERS_PER_WORD = 6.0
WORDPIECES_PER_WORD = 1.5
# Measured on the docstrings corpus (max_seq_length 128, defaults): the train instances hold 1.14 times the
# corpus's wordpieces (a random next segment leaves its chunk's sentences to later instances), and their mean
# length is 0.9 of what a segment pair holds (short targets, documents that end early).
NSP_TEXT_REUSE = 1.15
MEAN_LENGTH_SHARE = 0.9
# The model size assumed when the base model's config cannot be read here (an hf: model): BERT-base.
DEFAULT_MODEL_SHAPE = ModelShape(
    hidden_size=768, num_hidden_layers=12, intermediate_size=3072, vocab_size=30522
)


# The dense peak FLOP/s of known GPUs' tensor cores (fp32: their CUDA cores), by matrix-product precision:
# NVIDIA's datasheets, which print the tensor-core figures "with sparsity" (2:4 structured sparsity, twice
# the dense rate) for Ampere and later, halved here; a model training dense matrices can reach the dense rate
# only. Keyed by gpu_model's names. Sources (datasheets):
#   A100 (SXM and PCIe, 40 and 80 GB): "NVIDIA A100 Tensor Core GPU" datasheet: BF16/FP16 312, TF32 156
#     (dense; 624 / 312 with sparsity), FP32 19.5 TFLOPS;
#   H100 SXM, PCIe, NVL: "NVIDIA H100 Tensor Core GPU" datasheet: BF16/FP16 1,979 / 1,513 / 1,671, TF32 989
#     / 756 / 835 (with sparsity), FP32 67 / 51 / 60 TFLOPS;
#   H200 SXM and NVL: "NVIDIA H200 Tensor Core GPU" datasheet: BF16/FP16 1,979 / 1,671, TF32 989 / 835 (with
#     sparsity), FP32 67 / 60 TFLOPS (the same chip as the H100 SXM, more and faster memory; the issue that
#     asked for this table measured 786 TFLOP/s on an 8192-cube bf16 matmul on one);
#   L4: "NVIDIA L4 Tensor Core GPU" datasheet: BF16/FP16 242, TF32 120 (with sparsity), FP32 30.3 TFLOPS;
#   L40S: "NVIDIA L40S" datasheet: BF16/FP16 362.05 dense (733 with sparsity), TF32 183 (366), FP32 91.6
#     TFLOPS;
#   A10: "NVIDIA A10 Tensor Core GPU" datasheet: BF16/FP16 250, TF32 125 (with sparsity), FP32 31.2 TFLOPS
#     (not the A10G of cloud instances, which NVIDIA publishes no datasheet for: unknown here);
#   V100 SXM2 / PCIe: "NVIDIA Tesla V100" datasheet: FP16 tensor 125 / 112, FP32 15.7 / 14 TFLOPS (no bf16,
#     no TF32: bf16 and tf32 runs there have no peak here);
#   T4: "NVIDIA T4" datasheet: FP16 tensor 65, FP32 8.1 TFLOPS (no bf16, no TF32).
# The same figures as MosaicML Composer's SpeedMonitor (GPU_AVAILABLE_FLOPS), which reports mfu the same way.
PEAK_FLOPS_PER_SECOND: dict[str, dict[MatmulPrecision, float]] = {
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "H100 SXM": {"bf16": 1979e12 / 2, "fp16": 1979e12 / 2, "tf32": 989e12 / 2, "fp32": 67e12},
    "H100 PCIe": {"bf16": 1513e12 / 2, "fp16": 1513e12 / 2, "tf32": 756e12 / 2, "fp32": 51e12},
    "H100 NVL": {"bf16": 1671e12 / 2, "fp16": 1671e12 / 2, "tf32": 835e12 / 2, "fp32": 60e12},
    "H200": {"bf16": 1979e12 / 2, "fp16": 1979e12 / 2, "tf32": 989e12 / 2, "fp32": 67e12},
    "H200 NVL": {"bf16": 1671e12 / 2, "fp16": 1671e12 / 2, "tf32": 835e12 / 2, "fp32": 60e12},
    "L4": {"bf16": 242e12 / 2, "fp16": 242e12 / 2, "tf32": 120e12 / 2, "fp32": 30.3e12},
    "L40S": {"bf16": 362.05e12, "fp16": 362.05e12, "tf32": 183e12, "fp32": 91.6e12},
    "A10": {"bf16": 250e12 / 2, "fp16": 250e12 / 2, "tf32": 125e12 / 2, "fp32": 31.2e12},
    "V100 SXM2": {"fp16": 125e12, "fp32": 15.7e12},
    "V100 PCIe": {"fp16": 112e12, "fp32": 14e12},
    "T4": {"fp16": 65e12, "fp32": 8.1e12},
}
# torch.cuda.get_device_name() -> a key of PEAK_FLOPS_PER_SECOND: the first pattern that matches (case
# aside), whole words only, so "A10" is not "A100" nor "A10G", and "H200" is not "GH200". Names as CUDA
# reports them: "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA
# H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA L4", "NVIDIA L40S", "NVIDIA A10",
# "Tesla V100-SXM2-16GB", "Tesla V100-PCIE-32GB", "Tesla T4".
_GPU_MODELS: tuple[tuple[str, str], ...] = (
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe"),
    (r"\bH100\b.*\bNVL\b", "H100 NVL"),
    (r"\bH100\b", "H100 SXM"),
    (r"\bH200\b.*\bNVL\b", "H200 NVL"),
    (r"\bH200\b", "H200"),
    (r"\bA100\b", "A100"),
    (r"\bL40S\b", "L40S"),
    (r"\bL4\b", "L4"),
    (r"\bA10\b", "A10"),
    (r"\bV100\b.*\bPCIe\b", "V100 PCIe"),
    (r"\bV100\b", "V100 SXM2"),
    (r"\bT4\b", "T4"),
)


# -- steps ---------------------------------------------------------------------------------------------------


def steps_per_epoch(num_instances: int, batch_size: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps in one pass, counted like Trainer (a short last accumulation still steps)."""
    batches = math.ceil(num_instances / batch_size)
    return max(1, math.ceil(batches / gradient_accumulation_steps))


def total_steps(h: Hyperparameters, num_instances: int) -> int:
    """Optimizer steps of a run over ``num_instances`` instances an epoch: ``max_steps``, or the epochs'
    steps rounded up."""
    if h.max_steps is not None:
        return h.max_steps
    per_epoch = steps_per_epoch(num_instances, h.batch_size, h.gradient_accumulation_steps)
    return max(1, math.ceil(h.epochs * per_epoch))


def epoch_instances(h: Hyperparameters, train_instances: int) -> int:
    """The instances of one epoch: the domain's, plus the replayed ones (``replay_ratio``)."""
    return train_instances + h.replay_instances(train_instances)


def evaluation_passes(h: Hyperparameters, steps: int) -> int:
    """Evaluations of a run of ``steps`` steps: the baseline at step 0, every ``eval_every_steps``, and at
    the end (when that is not already one)."""
    every = h.eval_every_steps
    within = steps // every if every else 0
    return 1 + within + (0 if every and steps % every == 0 else 1)


# -- what a corpus gives --------------------------------------------------------------------------------


class _Figures(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")  # stored: read what other versions wrote


class SplitFigures(_Figures):
    """The instances of a prepared split (units: instances are sequences, tokens are wordpieces)."""

    documents: int = Field(description="Documents the split is made of.")
    instances: int = Field(description="Sequences (instances) of the split.")
    tokens: int = Field(description="Wordpieces of its instances, special tokens included.")
    mean_length: float = Field(description="Mean wordpieces per instance.")
    truncated_pairs: int = Field(
        description="Instances whose segment pair was trimmed to fit max_seq_length."
    )
    truncated_pair_share: float = Field(description="truncated_pairs / instances, in [0, 1].")
    tokens_used_share: float | None = Field(
        None, description="Share of the split's corpus wordpieces that reach an instance, in [0, 1]."
    )
    is_next_share: float | None = Field(None, description="Share of IsNext pairs (null without NSP).")


class StepFigures(_Figures):
    """A run's steps over a split: counted like transformers' Trainer."""

    epoch_instances: int = Field(description="Sequences of one epoch (replayed ones included).")
    sequences_per_step: int = Field(description="batch_size x gradient_accumulation_steps.")
    steps_per_epoch: int = Field(description="Optimizer steps of one epoch.")
    epochs: float = Field(description="Passes over the epoch's instances that the steps make.")
    total_steps: int = Field(description="Optimizer steps of the run (max_steps, or the epochs' steps).")
    tokens_per_step: float = Field(description="Real (non-padding) wordpieces an optimizer step trains on.")
    tokens: int = Field(description="Real wordpieces the run trains on: total_steps x tokens_per_step.")


def step_figures(h: Hyperparameters, train_instances: int, mean_length: float) -> StepFigures:
    """The steps and tokens of a run with ``h`` over ``train_instances`` domain instances of
    ``mean_length`` wordpieces."""
    instances = epoch_instances(h, train_instances)
    per_epoch = steps_per_epoch(instances, h.batch_size, h.gradient_accumulation_steps)
    steps = total_steps(h, instances)
    sequences = h.batch_size * h.gradient_accumulation_steps
    # A step takes sequences_per_step instances; the last one of an epoch fewer.
    tokens_per_step = min(sequences, max(instances, 1)) * mean_length
    return StepFigures(
        epoch_instances=instances,
        sequences_per_step=sequences,
        steps_per_epoch=per_epoch,
        epochs=round(steps / per_epoch, 4),
        total_steps=steps,
        tokens_per_step=round(tokens_per_step, 2),
        tokens=round(steps * tokens_per_step),
    )


class CorpusAnalysis(_Figures):
    """What a corpus gives with a model's tokenizer and preparation settings, without training
    (:func:`worker.pretraining.analysis.analyze_corpus`). Units: tokens are wordpieces, instances are
    sequences, seconds are wall-clock seconds of the worker that analysed it."""

    data_key: str = Field(
        description="The prepared-data cache key: a run with these settings and this tokenizer as it is "
        "reuses the data (not one with add_domain_tokens, whose extended tokenizer makes other instances)."
    )
    corpus_sha256: str
    tokenizer_fingerprint: str = Field(description="Hash of what in the tokenizer changes token ids.")
    preparation: dict[str, Any] = Field(description="The preparation settings analysed with.")
    tokenization: TokenizationStats = Field(
        description="The tokenizer's words, the share of them that include [UNK], and wordpieces per word."
    )
    corpus: dict[str, Any] = Field(
        description="The preparation's corpus summary (as `bertpt prepare` prints it): documents, sentences, "
        "characters, tokens (wordpieces), unk_rate (a share of wordpieces), long_lines..."
    )
    warnings: list[RunWarning] = Field(
        description="What the preparation's checks found, each with its source."
    )
    train: SplitFigures
    eval: SplitFigures | None = Field(description="The held-out split (null: nothing held out).")
    steps: StepFigures | None = Field(None, description="For the hyperparameters asked about.")
    preparation_seconds: float = Field(description="Seconds the preparation took (a run reuses its result).")
    seconds: float = Field(description="Seconds the whole analysis took.")


class ApproximateCorpus(_Figures):
    """A corpus's instances approximated from the counts stored at upload (see the module docstring)."""

    words: int
    tokens: int = Field(description="Wordpieces of the corpus.")
    train: SplitFigures
    eval_tokens: int = Field(description="Wordpieces of the held-out split's instances.")


def approximate_corpus(
    config: PreparationConfig, *, characters: int, documents: int, held_out_documents: int
) -> ApproximateCorpus:
    """The instances a corpus of ``characters`` characters in ``documents`` documents would give, of which
    ``held_out_documents`` are held out (:func:`worker.pretraining.preparation_rules.held_out_split`)."""
    words = characters / CHARACTERS_PER_WORD
    tokens = words * WORDPIECES_PER_WORD
    special = 3 if config.nsp else 2
    budget = config.max_seq_length - special
    per_document = tokens / max(documents, 1)
    text = max(1.0, min(float(budget), per_document) * MEAN_LENGTH_SHARE)
    train_share = 1.0 - held_out_documents / max(documents, 1)
    reuse = NSP_TEXT_REUSE if config.nsp else 1.0
    passes = config.dupe_factor if config.masking == "static" else 1

    def instances(share: float) -> int:
        return max(1, math.ceil(tokens * share * reuse / text)) if share > 0 else 0

    train = instances(train_share) * passes
    mean_length = text + special
    return ApproximateCorpus(
        words=round(words),
        tokens=round(tokens),
        train=SplitFigures(
            documents=documents - held_out_documents,
            instances=train,
            tokens=round(train * mean_length),
            mean_length=round(mean_length, 2),
            truncated_pairs=0,
            truncated_pair_share=0.0,
        ),
        eval_tokens=round(instances(1.0 - train_share) * mean_length),
    )


# -- time ----------------------------------------------------------------------------------------------


def training_flops_per_token(shape: ModelShape, *, sequence_length: float, masked_lm_prob: float) -> float:
    """Training FLOPs per token of a BERT of ``shape``: three times the forward pass's (the backward pass
    costs twice the forward), which is ``2 N + 2 n_layer n_ctx d_model`` (Kaplan et al. 2020, "Scaling
    Laws for Neural Language Models", table 1; ``N = n_layer (4 d_model^2 + 2 d_model d_ff)`` the
    non-embedding parameters, ``n_ctx`` the sequence length) plus the MLM head, which bertpt runs at the
    predicted positions only: ``2 (d_model^2 + d_model V)`` for ``masked_lm_prob`` of the tokens."""
    d, layers = shape.hidden_size, shape.num_hidden_layers
    d_ff = shape.intermediate_size or 4 * d
    parameters = layers * (4 * d * d + 2 * d * d_ff)
    forward = 2 * parameters + 2 * layers * sequence_length * d
    vocabulary = shape.vocab_size or 30522  # BERT's uncased vocabulary, when the config does not say
    head = 2 * masked_lm_prob * (d * d + d * vocabulary)
    return 3.0 * (forward + head)


def default_tokens_per_second(
    shape: ModelShape, device: Device, *, max_seq_length: int, masked_lm_prob: float
) -> float:
    """Real training tokens per second of a worker on ``device`` for a model of ``shape``, before any was
    measured: :data:`DEFAULT_FLOPS_PER_SECOND` over :func:`training_flops_per_token` at ``MEAN_LENGTH_SHARE``
    of ``max_seq_length``."""
    flops = training_flops_per_token(
        shape, sequence_length=max_seq_length * MEAN_LENGTH_SHARE, masked_lm_prob=masked_lm_prob
    )
    return DEFAULT_FLOPS_PER_SECOND[device] / flops


def run_seconds(
    *,
    steps: int,
    tokens_per_step: float,
    tokens_per_second: float,
    evaluation_tokens: float,
    evaluations: int,
    startup_seconds: float,
) -> Mapping[str, float]:
    """The seconds of a run from its claim to its end, by part: ``seconds_per_step``, ``training_seconds``
    (steps x seconds_per_step), ``evaluation_seconds`` (``evaluations`` passes over ``evaluation_tokens``
    wordpieces at :data:`EVALUATION_SPEEDUP` times the training throughput), ``startup_seconds`` and
    ``total_seconds``."""
    seconds_per_step = tokens_per_step / tokens_per_second
    training = steps * seconds_per_step
    evaluation = evaluations * evaluation_tokens / (EVALUATION_SPEEDUP * tokens_per_second)
    return {
        "seconds_per_step": seconds_per_step,
        "training_seconds": training,
        "evaluation_seconds": evaluation,
        "startup_seconds": startup_seconds,
        "total_seconds": startup_seconds + training + evaluation,
    }


# -- utilization -----------------------------------------------------------------------------------------


def gpu_model(device_name: str | None) -> str | None:
    """The key of :data:`PEAK_FLOPS_PER_SECOND` for a device as ``torch.cuda.get_device_name`` names it
    (``"NVIDIA H100 80GB HBM3"`` -> ``"H100 SXM"``); None for None (a CPU) or a name the table lacks."""
    if not device_name:
        return None
    for pattern, model in _GPU_MODELS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return model
    return None


def peak_flops_per_second(device_name: str | None, precision: MatmulPrecision) -> float | None:
    """The dense peak FLOP/s of the GPU named ``device_name`` for matrix products in ``precision``; None on
    a CPU (``device_name`` None), for a GPU the table does not know, or a precision it lacks (bf16 on a
    V100)."""
    model = gpu_model(device_name)
    return None if model is None else PEAK_FLOPS_PER_SECOND[model].get(precision)


def model_flops_utilization(
    shape: ModelShape | None,
    *,
    tokens_per_second: float,
    sequence_length: float,
    masked_lm_prob: float,
    peak_flops_per_second: float | None,
) -> float | None:
    """Model FLOPs utilization (MFU, Chowdhery et al. 2022, "PaLM", appendix B), a share in [0, 1] (above 1
    only if a peak is wrong): the useful training FLOP/s achieved, ``tokens_per_second`` real (non-padding)
    tokens times :func:`training_flops_per_token` of sequences of ``sequence_length`` real tokens with
    ``masked_lm_prob`` of them predicted, over ``peak_flops_per_second``. Padding, recomputation and the
    vocabulary projection at unpredicted positions are not useful work and not counted. None without a peak
    (a CPU, an unknown GPU) or a model shape."""
    if peak_flops_per_second is None or shape is None or peak_flops_per_second <= 0:
        return None
    flops = training_flops_per_token(shape, sequence_length=sequence_length, masked_lm_prob=masked_lm_prob)
    return tokens_per_second * flops / peak_flops_per_second
