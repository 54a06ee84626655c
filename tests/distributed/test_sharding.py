"""Sharded (2 gloo ranks) vs unsharded: same forward, same one-step update, for TW, CW, RW, TWRW and DP plans."""

from __future__ import annotations

from typing import Dict

import numpy as np
import pytest
import torch

from tests.ranks import run_ranks

STRATEGIES = ["table_wise", "column_wise", "row_wise", "table_row_wise", "data_parallel"]
LR = 0.1
BATCH = 64


def _setup():
    from mtl_torchrec.config import load_config
    from mtl_torchrec.data.bundle import DataBundle
    from mtl_torchrec.data.synthetic import generate_synthetic
    from mtl_torchrec.model.builder import build_train_module
    from mtl_torchrec.train.trainer import seed_everything

    cfg = load_config(
        None,
        [
            "data.synthetic.num_users=300",
            "data.synthetic.num_items=200",
            "data.synthetic.num_impressions=3000",
            "model.embedding_dim=8",
            "model.mmoe.num_experts=3",
            "model.mmoe.expert_layers=[16]",
            "model.tower_layers=[8]",
            "model.dense_layers=[8]",
        ],
    )
    syn = generate_synthetic(cfg.data.synthetic)
    data = DataBundle(syn.schema, syn.splits)
    seed_everything(0)
    module = build_train_module(cfg.model, data, cfg.train.loss_balance, cfg.train.balance)
    return cfg, data, module


def _batch(data, rows):
    from mtl_torchrec.data.batch import Batch

    return Batch.from_table(data.splits["train"].take(np.asarray(rows)), data.schema)


def _local_shards(state) -> Dict[str, list]:
    """(offsets, tensor) of every parameter shard this rank holds, keyed by plain name."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    out = {}
    for k, v in state.items():
        if isinstance(v, ShardedTensor):
            out[k] = [(list(s.metadata.shard_offsets), s.tensor.detach().clone()) for s in v.local_shards()]
        elif isinstance(v, torch.Tensor):
            out[k] = [([0] * v.dim(), v.detach().clone())]
    return out


def _rank_fn(rank: int, world_size: int):
    from mtl_torchrec.distributed.context import init_distributed

    ctx = init_distributed()
    # One process group for all plans: spawning ranks costs more than the checks themselves.
    results = {s: _one_plan(rank, ctx, s) for s in STRATEGIES}
    torch.distributed.destroy_process_group()
    return results


def _one_plan(rank: int, ctx, strategy: str):
    from mtl_torchrec.distributed.optim import make_optimizer
    from mtl_torchrec.distributed.sharding import shard_module
    from mtl_torchrec.distributed.state import copy_unsharded_state

    cfg, data, module = _setup()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    dmp = shard_module(module, ctx, strategy=strategy, sparse_optimizer="sgd", sparse_lr=LR)
    copy_unsharded_state(dmp, initial)

    local_rows = np.arange(rank * BATCH, (rank + 1) * BATCH)
    batch = _batch(data, local_rows)
    dmp.eval()
    with torch.no_grad():
        _, out = dmp(batch)
    logits = {k: v.clone() for k, v in out.model_output.logits.items()}

    dmp.train()
    opt = make_optimizer(dmp, "sgd", LR, sparse_optimizer="sgd", sparse_lr=LR)
    opt.zero_grad()
    loss, _ = dmp(batch)
    loss.backward()
    opt.step()
    after = _local_shards(dmp.state_dict())
    return {"logits": logits, "after": after}


def _reference(world_size: int):
    """Unsharded: forward per rank's rows; one SGD step on the mean of the ranks' losses
    (DDP averages dense gradients over ranks, and the sharded tables' gradients are averaged too)."""
    cfg, data, module = _setup()
    module.eval()
    logits = []
    with torch.no_grad():
        for r in range(world_size):
            _, out = module(_batch(data, np.arange(r * BATCH, (r + 1) * BATCH)))
            logits.append(out.model_output.logits)
    module.train()
    loss = sum(module(_batch(data, np.arange(r * BATCH, (r + 1) * BATCH)))[0] for r in range(world_size)) / world_size
    loss.backward()
    with torch.no_grad():
        for p in module.parameters():
            p -= LR * p.grad
    return logits, module.state_dict()


@pytest.mark.slow
def test_sharded_matches_unsharded() -> None:
    world_size = 2
    per_rank = run_ranks(_rank_fn, world_size)
    ref_logits, ref_after = _reference(world_size)
    for strategy in STRATEGIES:
        _check(strategy, [r[strategy] for r in per_rank], ref_logits, ref_after)


def _check(strategy, results, ref_logits, ref_after) -> None:
    for r, res in enumerate(results):
        for task, v in res["logits"].items():
            torch.testing.assert_close(v, ref_logits[r][task], rtol=1e-5, atol=1e-5, msg=f"{strategy}: {task}")
    checked_tables = 0
    for res in results:
        for key, shards in res["after"].items():
            assert key in ref_after, key
            full = ref_after[key]
            for offsets, t in shards:
                idx = tuple(slice(o, o + s) for o, s in zip(offsets, t.shape))
                torch.testing.assert_close(t, full[idx], rtol=1e-4, atol=1e-5, msg=f"{strategy}: {key}")
            checked_tables += "embedding_bags" in key
    assert checked_tables >= 9, "every table shard must have been compared"
