"""The gathered-head pre-training loss: the stock loss, additive over micro-batches, differentiable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.pretraining.base_model import load_base_model
from worker.pretraining.collator import PretrainingCollator
from worker.pretraining.loss import PretrainingLossModel, pretraining_loss
from worker.pretraining.masking import MaskingConfig, TokenMasker


def _instances(tokenizer: Any, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Synthetic [CLS] A [SEP] B [SEP] instances of varied lengths over the non-special vocabulary."""
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = np.array([i for i in range(len(tokenizer)) if i not in special])
    out = []
    for index in range(n):
        a, b = int(rng.integers(3, 20)), int(rng.integers(3, 25))
        ids = np.concatenate(
            [
                [tokenizer.cls_token_id],
                rng.choice(ordinary, a),
                [tokenizer.sep_token_id],
                rng.choice(ordinary, b),
                [tokenizer.sep_token_id],
            ]
        )
        out.append(
            {"index": index, "input_ids": ids, "segment_b_start": a + 2, "next_sentence_label": index % 2}
        )
    return out


def _batch(tokenizer: Any, n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    masker = TokenMasker.from_tokenizer(MaskingConfig(), tokenizer)
    collator = PretrainingCollator(pad_token_id=tokenizer.pad_token_id, masker=masker, seed=seed)
    return collator(_instances(tokenizer, n, seed))


def test_gathered_loss_equals_stock_loss(tiny_bert_dir: Path, tokenizer: Any) -> None:
    model = load_base_model(tiny_bert_dir).model.eval()
    batch = _batch(tokenizer)
    assert (batch["masked_lm_labels"] != -100).sum() == (batch["labels"] != -100).sum()
    with torch.no_grad():
        ours = pretraining_loss(model, batch)
        stock = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            labels=batch["labels"],
            next_sentence_label=batch["next_sentence_label"],
        )
        mlm_only = pretraining_loss(model, batch, nsp=False)
        logits = stock.prediction_logits
        stock_mlm = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1)
        )
    assert abs(ours.loss.item() - stock.loss.item()) < 1e-5
    assert abs(mlm_only.loss.item() - stock_mlm.item()) < 1e-5
    assert mlm_only.next_sentence_loss is None
    assert int(ours.masked_lm_count) == int((batch["labels"] != -100).sum())
    assert (
        ours.next_sentence_count is not None and int(ours.next_sentence_count) == batch["input_ids"].shape[0]
    )


def test_micro_batch_losses_sum_to_the_whole_batch_loss(tiny_bert_dir: Path, tokenizer: Any) -> None:
    """With normalizers counted over all micro-batches (gradient accumulation), the micro-batch losses
    add up to the token-weighted loss of the whole batch."""
    model = load_base_model(tiny_bert_dir).model.eval()
    batch = _batch(tokenizer, n=10, seed=3)
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    mlm_total = int((batch["masked_lm_labels"] != -100).sum())
    with torch.no_grad():
        whole = pretraining_loss(model, batch).loss
        parts = sum(
            pretraining_loss(model, half, masked_lm_normalizer=mlm_total, next_sentence_normalizer=10).loss
            for half in halves
        )
    assert abs(float(whole) - float(parts)) < 1e-5


def test_loss_gradients_reach_tied_embeddings_and_heads(tiny_encoder_dir: Path, tokenizer: Any) -> None:
    model = load_base_model(tiny_encoder_dir).model.train()
    out = pretraining_loss(model, _batch(tokenizer))
    out.loss.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad is not None
    assert model.cls.seq_relationship.weight.grad is not None
    assert model.cls.predictions.transform.dense.weight.grad is not None
    assert 0 <= int(out.masked_lm_correct) <= int(out.masked_lm_count)


def test_the_loss_module_is_the_stock_loss_and_holds_the_model(tiny_bert_dir: Path, tokenizer: Any) -> None:
    """PretrainingLossModel's forward is BertForPreTraining's own loss; its parameters are the model's (what
    DistributedDataParallel registers its gradient hooks on)."""
    model = load_base_model(tiny_bert_dir).model.eval()
    loss_model = PretrainingLossModel(model)
    batch = _batch(tokenizer, seed=5)
    with torch.no_grad():
        ours = loss_model(batch)
        stock = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            labels=batch["labels"],
            next_sentence_label=batch["next_sentence_label"],
        )
        mlm_only = PretrainingLossModel(model, nsp=False)(batch)
    assert abs(ours.loss.item() - stock.loss.item()) < 1e-5
    assert mlm_only.next_sentence_loss is None
    assert {id(p) for p in loss_model.parameters()} == {id(p) for p in model.parameters()}


def _ddp_gradients(
    rank: int, world: int, port: int, model_dir: str, batch: dict[str, torch.Tensor], out: str
):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = load_base_model(model_dir).model.eval()  # eval: no dropout, the ranks compare exactly
        ddp = DistributedDataParallel(PretrainingLossModel(model))
        half = {k: v[rank * 4 : (rank + 1) * 4] for k, v in batch.items()}
        predicted = (batch["masked_lm_labels"] != -100).sum()
        # Normalizers of the whole batch over the world size: DDP averages the ranks' gradients.
        ddp(half, masked_lm_normalizer=predicted / world, next_sentence_normalizer=8 / world).loss.backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, out)
    finally:
        dist.destroy_process_group()


def test_ddp_around_the_loss_module_gives_the_whole_batch_gradient(
    tmp_path: Path, tiny_bert_dir: Path, tokenizer: Any
) -> None:
    """Two gloo processes, each with half the batch, through DDP(PretrainingLossModel): rank 0's gradients
    are those of one process on the whole batch (they would be its half's alone if the loss bypassed DDP)."""
    import socket

    import torch.multiprocessing as mp

    batch = _batch(tokenizer, n=8, seed=7)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "grads.pt"
    mp.spawn(_ddp_gradients, args=(2, port, str(tiny_bert_dir), batch, str(out)), nprocs=2, join=True)
    distributed = torch.load(out)
    model = load_base_model(tiny_bert_dir).model.eval()
    PretrainingLossModel(model)(batch).loss.backward()
    half_only = load_base_model(tiny_bert_dir).model.eval()
    first = {k: v[:4] for k, v in batch.items()}
    PretrainingLossModel(half_only)(first).loss.backward()
    name = "bert.encoder.layer.0.attention.self.query.weight"
    expected = dict(model.named_parameters())[name].grad
    assert torch.allclose(distributed[name], expected, atol=1e-6)
    assert not torch.allclose(distributed[name], dict(half_only.named_parameters())[name].grad, atol=1e-6)
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(distributed[n], p.grad, atol=1e-5), n
