"""TorchRec's own DLRM with mtl_torchrec's multi-task head on its over-arch input, trained with the
stock planner, TrainPipelineSparseDist and 2 gloo ranks on synthetic data.

Tasks: ``click`` (binary), ``purchase`` (ESMM: trained as click AND purchase, its tower gives
p(purchase | click)) and ``rating`` (regression, labelled on clicked rows only). GradNorm balances
them with its own learning rate (``param_groups``); the heads start from the label statistics.

    python examples/dlrm_multitask/train.py                 # 2 ranks, 300 steps
    python examples/dlrm_multitask/train.py --steps 20      # a quick check
"""

from __future__ import annotations

import argparse
import os
import socket
from typing import Dict, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.types import ShardingEnv
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtl_torchrec.distributed.sharding import default_sharders
from mtl_torchrec.eval.metrics import binary_auc
from mtl_torchrec.launch.args import doc_summary
from mtl_torchrec.model.balancing import GradNorm
from mtl_torchrec.model.head import MultiTaskHead, param_groups
from mtl_torchrec.model.tasks import TaskSpec, multitask_loss, predictions

FEATURES = {"user": 500, "item": 300, "category": 20}
NUM_DENSE, DIM, BATCH = 4, 16, 256


# ---- synthetic data (not part of the user code) ------------------------------------------------
def make_data(rows: int, seed: int) -> Dict[str, torch.Tensor]:
    """Ids, dense features and labels whose click, purchase and rating depend on both."""
    g = torch.Generator().manual_seed(seed)
    ids = {f: torch.randint(0, n, (rows,), generator=g) for f, n in FEATURES.items()}
    dense = torch.randn(rows, NUM_DENSE, generator=g)
    taste = torch.sin(ids["user"] * 0.37) + torch.cos(ids["item"] * 0.11) + 0.3 * (ids["category"] % 3)
    score = taste + dense[:, 0] - 0.5
    click = torch.bernoulli(torch.sigmoid(2 * score), generator=g)
    purchase = click * torch.bernoulli(torch.sigmoid(2 * taste - 1.5), generator=g)
    rating = (3.5 + 0.8 * taste + 0.3 * dense[:, 1] + 0.3 * torch.randn(rows, generator=g)) * click
    return {**ids, "dense": dense, "labels": torch.stack([click, purchase, rating], dim=1)}


def batches(data: Dict[str, torch.Tensor], start: int, stop: int):
    """torchrec ``Batch`` es of one id per feature per row."""
    for i in range(start, stop - BATCH + 1, BATCH):
        rows = slice(i, i + BATCH)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=list(FEATURES), values=torch.cat([data[f][rows] for f in FEATURES]),
            lengths=torch.ones(BATCH * len(FEATURES), dtype=torch.int32))
        yield Batch(dense_features=data["dense"][rows], sparse_features=kjt, labels=data["labels"][rows])


# ---- user code: DLRM + MultiTaskHead -----------------------------------------------------------
TASKS = [TaskSpec("click", "binary"), TaskSpec("purchase", "binary", esmm_parent="click"),
         TaskSpec("rating", "regression")]


class MultiTaskDLRM(nn.Module):
    """DLRM's sparse, dense and interaction archs; our head replaces its over-arch."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        ebc = EmbeddingBagCollection(device=device, tables=[
            EmbeddingBagConfig(name=f"t_{f}", embedding_dim=DIM, num_embeddings=n, feature_names=[f])
            for f, n in FEATURES.items()])
        self.dlrm = DLRM(ebc, NUM_DENSE, dense_arch_layer_sizes=[32, DIM], over_arch_layer_sizes=[8, 1])
        n = len(FEATURES)
        self.dlrm.over_arch = MultiTaskHead(DIM + n + n * (n - 1) // 2, TASKS, "mmoe",
                                            {"num_experts": 4, "expert_layers": [32]}, tower_layers=[16])
        self.balancer = GradNorm({t.name: 1.0 for t in TASKS})

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Tuple[Dict[str, torch.Tensor], ...]]:
        """(balanced loss, (detached per-task losses, predictions [B] per task)), as the pipeline wants."""
        x = self.dlrm.inter_arch(self.dlrm.dense_arch(batch.dense_features),
                                 self.dlrm.sparse_arch(batch.sparse_features))
        logits = self.dlrm.over_arch(x)
        # Index by the stored task list: the pipeline traces this forward with proxies.
        labels = {t.name: batch.labels[:, i] for i, t in enumerate(TASKS)}
        masks = {"click": torch.ones_like(labels["click"]), "purchase": torch.ones_like(labels["click"]),
                 "rating": labels["click"]}
        losses = multitask_loss(logits, labels, masks, TASKS)
        total = self.balancer(losses, x, torch.stack([masks[t.name].sum() for t in TASKS]))
        return total, ({k: v.detach() for k, v in losses.items()}, predictions(logits, TASKS))


def train(rank: int, world_size: int, port: int, steps: int) -> None:
    """One gloo rank: shard with the stock planner, train ``steps`` batches, score held-out rows."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial dense weights on every rank
    device = torch.device("cpu")
    data = make_data(BATCH * (steps + 20), seed=rank)  # each rank its own rows
    train_rows = BATCH * steps
    model = MultiTaskDLRM(torch.device("meta"))
    labels = {t.name: data["labels"][:train_rows, i] for i, t in enumerate(TASKS)}
    model.dlrm.over_arch.init_from_labels(labels, {"click": torch.ones_like(labels["click"]),
                                                   "purchase": torch.ones_like(labels["click"]),
                                                   "rating": labels["click"]})
    sharders = default_sharders({"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": 0.05})
    plan = EmbeddingShardingPlanner(topology=Topology(world_size=world_size, compute_device="cpu")).collective_plan(
        model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
                                   device=device, plan=plan, sharders=sharders)
    optimizer = torch.optim.Adam(param_groups(dmp, lr=3e-3, balancer=dmp.module.balancer))
    pipeline = TrainPipelineSparseDist(dmp, optimizer, device)
    it = batches(data, 0, train_rows)
    first = last = None
    for _ in range(steps):
        losses, _ = pipeline.progress(it)
        first = first or {k: float(v) for k, v in losses.items()}
        last = {k: float(v) for k, v in losses.items()}
    pipeline.detach()  # back to plain forwards for evaluation
    dmp.eval()
    preds: Dict[str, list] = {t.name: [] for t in TASKS}
    with torch.no_grad():
        for b in batches(data, train_rows, len(data["dense"])):
            _, (_, p) = dmp(b)
            for t in TASKS:
                preds[t.name].append(p[t.name])
    report(rank, world_size, data["labels"][train_rows:], preds, first, last, dmp.module.balancer.weights())
    dist.destroy_process_group()


def report(rank, world_size, labels, preds, first, last, weights) -> None:
    """Gathers the held-out predictions of every rank; rank 0 prints per-task AUC / RMSE."""
    mine = torch.cat([labels[: len(torch.cat(preds["click"]))]] + [torch.cat(preds[t.name])[:, None] for t in TASKS], 1)
    every = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(every, mine)
    if rank:
        return
    y = torch.cat(every).numpy().astype(np.float64)
    click, purchase, rating, p = y[:, 0], y[:, 1], y[:, 2], y[:, 3:]
    print("loss first -> last: " + ", ".join(f"{k} {first[k]:.4f} -> {last[k]:.4f}" for k in first))
    print("GradNorm weights: " + ", ".join(f"{k} {v:.3f}" for k, v in weights.items()))
    print(f"auc click {binary_auc(p[:, 0], click):.4f}")
    print(f"auc purchase {binary_auc(p[:, 1], purchase):.4f}")
    print(f"rmse rating {np.sqrt(np.mean((p[click > 0.5, 2] - rating[click > 0.5]) ** 2)):.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--steps", type=int, default=300, help="training steps per rank")
    parser.add_argument("--ranks", type=int, default=2, help="gloo ranks (processes)")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    mp.start_processes(train, args=(args.ranks, free, args.steps), nprocs=args.ranks, start_method="spawn")
