"""Training and scoring speed side by side: our trainer and evaluator vs a plain-PyTorch reference
of the same network (and DeepCTR-Torch's MMOE when it is installed), in one run.

The reference network (issue 13's "reference config"): the built-in synthetic data's 9 id features
(8 one-hot, one multi-hot) at width 16 plus a dense MLP [64, 16] over 3 dense features (input 160),
MMoE with 8 experts [256, 128] and a [64] hidden layer in each of the 3 gates, towers [64], tasks
click (BCE), conversion (BCE) and rating (masked MSE), batch 1024, Adam 2e-3 on the dense part and
element-wise Adagrad 0.1 on the tables.

* **ours**: the real ``Trainer`` (DMP, fused table optimizer, ``TrainPipelineSparseDist``, our data
  loader, per-step callbacks) and the real ``evaluate_split`` scoring loop (every rank scores its
  rows, which are gathered to rank 0; rank 0 computes the torchrec metrics from them; the exact
  AUC/GAUC computed there afterwards is timed apart).
* **plain**: the network written out in plain PyTorch in this file: one ``nn.Embedding`` over all
  features' ids (sparse gradients, ``torch.optim.Adagrad``), the first layer of every expert and
  gate as one matmul, the other expert layer as one ``baddbmm``; its batches are tensor slices of
  arrays built before timing (as a hand-written loop over in-memory data would).
* **deepctr**: ``deepctr_torch.models.MMOE`` over the same features and layer sizes, when
  ``import deepctr_torch`` works, twice: ``deepctr`` steps its network in a loop written here
  (like plain), ``deepctr fit`` trains it through DeepCTR's own ``fit`` (its DataLoader and
  bookkeeping: what a DeepCTR user runs). This benchmark installs nothing: run it with
  ``PYTHONPATH=<folder with deepctr-torch>`` (e.g. a folder filled by
  ``pip install --no-deps --target <folder> deepctr-torch``), as the README's speed section does.
* **ours' matmuls** (training): the matrix products of one of our training steps, recorded with
  ``torch.profiler`` and replayed alone on tensors of the same shapes: how fast a step would be if
  everything else in it took no time (``torch.profiler`` prints two ``USDT: ... profiler_start/stop``
  lines on stderr while it records them).

Each round times every contestant for the same number of steps, alternating the order; the
medians are compared (ratios to the fastest plain variant). The compute floor is the dense matmul
FLOPs per sample (counted with ``torch.utils.flop_counter.FlopCounterMode`` on the plain network:
forward, and forward + backward for training) divided by the machine's matmul peak, measured with
``torch.mm`` on 2048 x 2048 float32 at the same thread count at the start of every round (the
machine's speed drifts between rounds); "% of floor" is the median over rounds of each round's
rate against that round's peak.

    OMP_NUM_THREADS=2 python benchmarks/speed.py                      # 1 process x 2 threads
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 benchmarks/speed.py   # 2 ranks x 1 thread
    python benchmarks/speed.py --rounds 5 --steps 20 --only train

Run it on an otherwise idle machine: other load changes every contestant's speed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mtl_torchrec.config import load_config
from mtl_torchrec.core.io import write_json
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.schema import ColumnTable, Jagged, Schema
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.distributed.context import DistContext, close_distributed, init_distributed
from mtl_torchrec.eval.evaluate import evaluate_split
from mtl_torchrec.launch.args import config_arg, doc_summary
from mtl_torchrec.launch.quiet import silence_known_warnings
from mtl_torchrec.workflows.training import make_trainer

REFERENCE = [
    "model.embedding_dim=16",
    "model.backbone=mmoe",
    "model.mmoe.num_experts=8",
    "model.mmoe.expert_layers=[256,128]",
    "model.mmoe.gate_layers=[64]",
    "model.tower_layers=[64]",
    "model.dense_layers=[64,16]",
    "data.batch_size=1024",
    "train.dense_lr=0.002",
    "train.sparse_optimizer=adagrad",
    "train.sparse_lr=0.1",
    "train.progress=false",
    "train.log_every=0",
]


# --------------------------------------------------------------------------- the plain reference


class PlainMMoE(nn.Module):
    """The reference network in plain PyTorch (see the module docstring)."""

    def __init__(self, cardinalities: List[int], multi_valued: List[bool], num_dense: int, dim: int = 16,
                 experts: int = 8, expert_layers: Tuple[int, int] = (256, 128), gate_hidden: int = 64,
                 tower: int = 64, tasks: int = 3) -> None:
        super().__init__()
        offsets = np.concatenate([[0], np.cumsum(cardinalities)[:-1]])
        self.register_buffer("offsets", torch.as_tensor(offsets, dtype=torch.int64), persistent=False)
        self.multi = multi_valued
        # One table for every feature; the last row is the padding of multi-hot bags.
        self.pad = int(sum(cardinalities))
        self.table = nn.Embedding(self.pad + 1, dim, padding_idx=self.pad, sparse=True)
        self.dense = nn.Sequential(nn.Linear(num_dense, 64), nn.ReLU(), nn.Linear(64, 16), nn.ReLU())
        width = dim * len(cardinalities) + 16
        self.e, (self.h1, self.h2), self.t, self.g = experts, expert_layers, tasks, gate_hidden
        self.first = nn.Linear(width, experts * self.h1 + tasks * gate_hidden)
        self.w2 = nn.Parameter(torch.randn(experts, self.h1, self.h2) / self.h1 ** 0.5)
        self.b2 = nn.Parameter(torch.zeros(experts, 1, self.h2))
        self.gate_w = nn.Parameter(torch.randn(tasks, gate_hidden, experts) / gate_hidden ** 0.5)
        self.gate_b = nn.Parameter(torch.zeros(tasks, 1, experts))
        self.tower1 = nn.Parameter(torch.randn(tasks, self.h2, tower) / self.h2 ** 0.5)
        self.tower1_b = nn.Parameter(torch.zeros(tasks, 1, tower))
        self.tower2 = nn.Parameter(torch.randn(tasks, tower, 1) / tower ** 0.5)
        self.tower2_b = nn.Parameter(torch.zeros(tasks, 1, 1))

    def forward(self, single: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """``single`` [B, F1] table rows, ``multi`` [B, L] padded rows of the multi-hot feature,
        ``dense`` [B, D]; returns [tasks, B] logits."""
        b = single.shape[0]
        emb = self.table(single).reshape(b, -1)
        bag = self.table(multi).sum(1)
        x = torch.cat([emb, bag, self.dense(dense)], dim=1)
        h = torch.relu(self.first(x))
        experts = h[:, : self.e * self.h1].reshape(b, self.e, self.h1).transpose(0, 1)
        experts = torch.relu(torch.baddbmm(self.b2, experts, self.w2))             # [E, B, h2]
        gates = h[:, self.e * self.h1:].reshape(b, self.t, self.g).transpose(0, 1)
        gates = torch.softmax(torch.baddbmm(self.gate_b, gates, self.gate_w), -1)   # [T, B, E]
        mixed = torch.bmm(gates.transpose(0, 1), experts.transpose(0, 1)).transpose(0, 1)  # [T, B, h2]
        t = torch.relu(torch.baddbmm(self.tower1_b, mixed, self.tower1))
        return torch.baddbmm(self.tower2_b, t, self.tower2).squeeze(-1)


class PlainData:
    """The split's columns as tensors, built before timing: table rows (with each feature's offset)
    of the one-hot features, padded rows of the multi-hot one, dense, labels and masks."""

    def __init__(self, table: ColumnTable, schema: Schema, model: PlainMMoE) -> None:
        offsets = model.offsets.numpy()
        single, multi = [], None
        for i, f in enumerate(schema.id_features):
            col = table[f.name]
            if isinstance(col, Jagged):
                width = int(col.lengths.max()) if len(col.lengths) else 1
                pad = np.full((len(col.lengths), width), model.pad, dtype=np.int64)
                starts = np.concatenate([[0], np.cumsum(col.lengths)[:-1]])
                for j in range(width):
                    has = col.lengths > j
                    pad[has, j] = col.values[starts[has] + j] + offsets[i]
                multi = pad
            else:
                single.append(np.asarray(col, dtype=np.int64) + offsets[i])
        self.single = torch.from_numpy(np.stack(single, 1))
        self.multi = torch.from_numpy(multi)
        self.dense = torch.from_numpy(np.stack([np.asarray(table[d], dtype=np.float32) for d in schema.dense_names], 1))
        ys, ms = [], []
        for lab in schema.labels:
            y = np.asarray(table[lab.column_name], dtype=np.float32)
            ms.append(~np.isnan(y))
            ys.append(np.nan_to_num(y))
        self.labels = torch.from_numpy(np.stack(ys))
        self.masks = torch.from_numpy(np.stack(ms).astype(np.float32))
        self.binary = [lab.type == "binary" for lab in schema.labels]
        self.rows = len(self.dense)

    def batch(self, idx: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self.single[idx], self.multi[idx], self.dense[idx], self.labels[:, idx], self.masks[:, idx]


def plain_loss(logits: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, binary: List[bool]) -> torch.Tensor:
    total = logits.new_zeros(())
    for k, is_binary in enumerate(binary):
        if is_binary:
            per_row = nn.functional.binary_cross_entropy_with_logits(logits[k], labels[k], reduction="none")
        else:
            per_row = (logits[k] - labels[k]) ** 2
        total = total + (per_row * masks[k]).sum() / masks[k].sum().clamp_min(1.0)
    return total


class PlainTrainer:
    """Steps of the plain reference: shuffled batches, forward, loss, backward, Adam + sparse Adagrad.
    Under 2 ranks the dense part is averaged by DDP and the table's sparse gradient too."""

    def __init__(self, data: PlainData, model: PlainMMoE, batch_size: int, world: int, rank: int) -> None:
        self.data, self.batch_size, self.world, self.rank = data, batch_size, world, rank
        self.model = model
        self.net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
        self.sparse = torch.optim.Adagrad([model.table.weight], lr=0.1)
        self.dense = torch.optim.Adam([p for n, p in model.named_parameters() if n != "table.weight"], lr=2e-3)
        self.gen = torch.Generator().manual_seed(0)
        self.perm = torch.randperm(data.rows, generator=self.gen)
        self.pos = 0

    def step(self) -> None:
        g = self.batch_size * self.world
        if self.pos + g > self.data.rows:
            self.perm, self.pos = torch.randperm(self.data.rows, generator=self.gen), 0
        idx = self.perm[self.pos + self.rank * self.batch_size: self.pos + (self.rank + 1) * self.batch_size]
        self.pos += g
        single, multi, dense, labels, masks = self.data.batch(idx)
        self.sparse.zero_grad()
        self.dense.zero_grad()
        loss = plain_loss(self.net(single, multi, dense), labels, masks, self.data.binary)
        loss.backward()
        self.sparse.step()
        self.dense.step()


def plain_scores(data: PlainData, model: PlainMMoE, batch_size: int, rows: int) -> None:
    """A plain forward pass over ``rows`` rows in batches, predictions kept (no metrics)."""
    out = []
    with torch.inference_mode():
        for start in range(0, rows, batch_size):
            idx = slice(start, min(rows, start + batch_size))
            logits = model(data.single[idx], data.multi[idx], data.dense[idx])
            out.append(torch.sigmoid(logits))
    torch.cat(out, 1)


# --------------------------------------------------------------------------- DeepCTR-Torch (optional)


def deepctr_trainer(table: ColumnTable, schema: Schema, batch_size: int,
                    steps: int) -> Optional[Tuple[Callable[[], None], Callable[[], None]]]:
    """DeepCTR-Torch's MMOE on the same features, or None when it is not installed: ``(step, fit)``.

    ``step`` is one training step of its network in a loop written here (batches sliced from
    tensors built before timing, like the plain reference); ``fit`` trains it on the next
    ``steps`` batches through DeepCTR's own ``BaseModel.fit`` (its DataLoader over a
    TensorDataset, shuffled, with its per-step loss bookkeeping): what a DeepCTR user runs."""
    try:
        from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
        from deepctr_torch.models import MMOE
    except Exception:
        return None
    feats, inputs = [], {}
    for f in schema.id_features:
        col = table[f.name]
        if isinstance(col, Jagged):
            width = int(col.lengths.max())
            pad = np.zeros((len(col.lengths), width), dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(col.lengths)[:-1]])
            for j in range(width):
                has = col.lengths > j
                pad[has, j] = col.values[starts[has] + j] + 1  # 0 is DeepCTR's padding
            feats.append(VarLenSparseFeat(SparseFeat(f.name, f.num_embeddings + 1, embedding_dim=16), width,
                                          combiner="sum"))
            inputs[f.name] = pad
        else:
            feats.append(SparseFeat(f.name, f.num_embeddings, embedding_dim=16))
            inputs[f.name] = np.asarray(col, dtype=np.int64)
    for d in schema.dense_names:
        feats.append(DenseFeat(d, 1))
        inputs[d] = np.asarray(table[d], dtype=np.float32)
    model = MMOE(feats, num_experts=8, expert_dnn_hidden_units=(256, 128), gate_dnn_hidden_units=(64,),
                 tower_dnn_hidden_units=(64,), task_types=["binary", "binary", "regression"],
                 task_names=schema.tasks, device="cpu")
    model.compile("adam", loss=["binary_crossentropy", "binary_crossentropy", "mse"])
    from deepctr_torch.inputs import build_input_features

    index = build_input_features(feats)
    x = np.zeros((len(table), max(v[1] for v in index.values())), dtype=np.float32)
    for name, (lo, hi) in index.items():
        x[:, lo:hi] = inputs[name].reshape(len(table), -1)
    xt = torch.from_numpy(x)
    ys = torch.from_numpy(np.stack([np.nan_to_num(np.asarray(table[lab.column_name], dtype=np.float32))
                                    for lab in schema.labels], 1))
    opt, loss_fns = model.optim, model.loss_func
    pos = [0]

    def step() -> None:
        lo = pos[0] if pos[0] + batch_size <= len(xt) else 0
        pos[0] = lo + batch_size
        xb, yb = xt[lo:lo + batch_size], ys[lo:lo + batch_size]
        y_pred = model(xb)
        loss = sum(loss_fns[i](y_pred[:, i], yb[:, i], reduction="sum") for i in range(3))
        opt.zero_grad()
        loss.backward()
        opt.step()

    y_np = ys.numpy()
    fit_pos = [0]

    def fit() -> None:
        rows = steps * batch_size
        lo = fit_pos[0] if fit_pos[0] + rows <= len(y_np) else 0
        fit_pos[0] = lo + rows
        # fit() prints the device and a "Train on ..." line each call; verbose=0 turns off its bar.
        with contextlib.redirect_stdout(io.StringIO()):
            model.fit({k: v[lo:lo + rows] for k, v in inputs.items()}, y_np[lo:lo + rows], batch_size=batch_size,
                      epochs=1, verbose=0)

    return step, fit


# --------------------------------------------------------------------------- measuring


def matmul_peak(seconds: float = 1.0) -> float:
    """FLOP/s of float32 ``torch.mm`` on 2048 x 2048 at the current thread count (best of 5)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = 0.0
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            torch.mm(a, b)
            n += 1
        best = max(best, n * 2 * 2048 ** 3 / (time.perf_counter() - t0))
    return best


def plain_flops(model: PlainMMoE, data: PlainData, batch: int) -> Tuple[float, float]:
    """Matmul FLOPs per sample of the plain network: (forward, forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    idx = torch.arange(batch)
    single, multi, dense, labels, masks = data.batch(idx)
    with FlopCounterMode(display=False) as fwd:
        model(single, multi, dense)
    with FlopCounterMode(display=False) as both:
        plain_loss(model(single, multi, dense), labels, masks, data.binary).backward()
    model.zero_grad(set_to_none=True)
    return fwd.get_total_flops() / batch, both.get_total_flops() / batch


def rounds(contestants: Dict[str, Callable[[], float]], n: int, world: int) -> Tuple[Dict[str, List[float]], List[float]]:
    """Runs every contestant once per round (order alternating); each returns its rate. Each round
    starts with a ``torch.mm`` peak measurement (all ranks at once), so that the floor follows the
    machine's speed through the run: returns the rates and the peak of every round (FLOP/s per rank)."""
    rates: Dict[str, List[float]] = {k: [] for k in contestants}
    peaks: List[float] = []
    names = list(contestants)
    for r in range(n):
        if world > 1:
            dist.barrier()
        peaks.append(matmul_peak(0.5))
        for name in names if r % 2 == 0 else names[::-1]:
            if world > 1:
                dist.barrier()
            rates[name].append(contestants[name]())
    return rates, peaks


def matmuls_of(step: Callable[[], Any]) -> Tuple[Callable[[], None], int]:
    """The matrix products that one call of ``step`` runs (``aten::mm``, ``addmm``, ``bmm``,
    ``baddbmm``, recorded with ``torch.profiler``), replayed back to back on random contiguous
    tensors of the same shapes: ``(replay, count)``. Its rate is the ceiling of a step whose
    other work (lookups, elementwise ops, optimizers, Python) took no time at all."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    calls: List[Callable[[], Any]] = []
    for event in prof.events():
        shapes = [tuple(s) for s in event.input_shapes if s]
        if event.name in ("aten::mm", "aten::bmm"):
            a, b = torch.randn(*shapes[0]), torch.randn(*shapes[1])
            calls.append(functools.partial(torch.mm if event.name == "aten::mm" else torch.bmm, a, b))
        elif event.name in ("aten::addmm", "aten::baddbmm"):
            c, a, b = (torch.randn(*x) for x in shapes[:3])
            calls.append(functools.partial(torch.addmm if event.name == "aten::addmm" else torch.baddbmm, c, a, b))

    def replay() -> None:
        for call in calls:
            call()

    return replay, len(calls)


def timed(fn: Callable[[], Any], steps: int, rows_per_step: int) -> Callable[[], float]:
    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        return steps * rows_per_step / (time.perf_counter() - t0)

    return run


def report(title: str, rates: Dict[str, List[float]], flops: float, peaks: List[float], world: int) -> None:
    """Median rows/s of each contestant, its ratio to the fastest plain variant and % of the floor
    (median over rounds of the round's rate against that round's matmul peak)."""
    med = {k: statistics.median(v) for k, v in rates.items()}
    plain = max(v for k, v in med.items() if k.startswith("plain"))
    print(f"\n{title}; matmul peak per rank by round: " + ", ".join(f"{p / 1e9:.0f}" for p in peaks) + " GFLOP/s")
    print(f"{'':<16}{'median rows/s':>15}{'vs plain':>10}{'% of floor':>12}   rounds")
    for k, v in med.items():
        floor = statistics.median(r * flops / (p * world) for r, p in zip(rates[k], peaks))
        print(f"{k:<16}{v:>15,.0f}{v / plain:>9.2f}x{100 * floor:>11.1f}%   " + ", ".join(f"{x:,.0f}" for x in rates[k]))


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--config", type=config_arg, default="default")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=30, help="timed training steps per contestant per round")
    p.add_argument("--score-rows", type=int, default=100_000, help="rows scored per contestant per round")
    p.add_argument("--score-batch", type=int, default=4096)
    p.add_argument("--only", choices=["train", "score"], default=None)
    p.add_argument("--impressions", type=int, default=300_000)
    p.add_argument("--ours-only", action="store_true", help="time ours alone (benchmarks/scaling.py)")
    p.add_argument("--json", type=Path, default=None, help="also write every round's rates here (rank 0)")
    p.add_argument("overrides", nargs="*", help="config overrides on top of the reference config")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    silence_known_warnings()
    # The plain reference's torch.optim.Adagrad over sparse gradients warns once that torch skips its
    # sparse-tensor invariant checks; the gradients come from nn.Embedding, which builds them valid.
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
    ctx: DistContext = init_distributed()
    world, rank = ctx.world_size, ctx.rank
    cfg = load_config(args.config, [f"data.synthetic.num_impressions={args.impressions}", *REFERENCE,
                                    *args.overrides])
    data: DataBundle = load_data(cfg.data).without_text()
    schema, train = data.schema, data.splits["train"]
    feats = schema.id_features
    torch.manual_seed(0)
    plain = PlainMMoE([f.num_embeddings for f in feats], [f.multi_valued for f in feats], len(schema.dense_names))
    pdata = PlainData(train, schema, plain)
    fwd_flops, train_flops = plain_flops(plain, pdata, 256)
    bs = cfg.data.batch_size
    if ctx.is_main:
        print(f"{world} rank(s) x {torch.get_num_threads()} thread(s); batch {bs} per rank; matmul FLOPs per sample: "
              f"forward {fwd_flops / 1e6:.2f} M, train step {train_flops / 1e6:.2f} M")
    # The floor in rows/s over all ranks is world x peak / FLOPs per sample. Ranks measure the peak at
    # the same time (rounds()): the floor of several ranks is what the cores give when every rank
    # multiplies at once (shared caches, memory and clock).
    results: Dict[str, Dict[str, List[float]]] = {}
    all_peaks: List[float] = []
    with tempfile.TemporaryDirectory() as out:
        if args.only in (None, "train"):
            trainer = make_trainer(cfg, data, ctx, Path(out) / "run")
            ptrain = PlainTrainer(pdata, plain, bs, world, rank)
            contestants = {
                "ours": timed(lambda: trainer.run_steps(1), args.steps, bs * world),
                "plain": timed(ptrain.step, args.steps, bs * world),
            }
            if args.ours_only:
                del contestants["plain"]
            dc = deepctr_trainer(train, schema, bs, args.steps) if world == 1 and not args.ours_only else None
            if dc is not None:
                contestants["deepctr"] = timed(dc[0], args.steps, bs)
                contestants["deepctr fit"] = timed(dc[1], 1, args.steps * bs)
            for fn in contestants.values():  # warm-up
                fn()
            if not args.ours_only:
                replay, count = matmuls_of(lambda: trainer.run_steps(1))
                contestants["ours' matmuls"] = timed(replay, args.steps, bs * world)
            rates, peaks = rounds(contestants, args.rounds, world)
            all_peaks += peaks
            results["train"] = rates
            if ctx.is_main and not args.ours_only:
                report(f"training ({args.rounds} rounds x {args.steps} steps; rows/s over all ranks)", rates,
                       train_flops, peaks, world)
                print(f"(ours' matmuls: the {count} matrix products of one of our steps alone, back to back)")
                if dc is None and world == 1:
                    print("deepctr: not importable; to include it, run with PYTHONPATH=<folder with deepctr-torch> "
                          "(e.g. pip install --no-deps --target <folder> deepctr-torch), as in the README")
            # Scoring starts from a clean slate: the training contestants' models, optimizer state and
            # pipelines are released first.
            trainer.close()
            del trainer, ptrain, contestants, dc
            gc.collect()
        if args.only in (None, "score"):
            test = data.splits["train"].take(np.arange(min(args.score_rows, len(train))))
            rows = len(test)
            bundle = DataBundle(schema=schema, splits={"score": test})
            trainer = make_trainer(cfg, data, ctx, Path(out) / "score_run")
            model = trainer.dmp
            plain.eval()
            scoring_t: List[float] = []

            def ours() -> float:
                res = evaluate_split(model, trainer.tasks, bundle, "score", ctx, args.score_batch, {})
                if ctx.is_main:
                    scoring_t.append(res.summary["timing"]["rank0_metrics_s"])
                return rows / res.summary["timing"]["score_s"] if ctx.is_main else 0.0

            per_rank = (rows + world - 1) // world
            lo = rank * per_rank
            pdata_rank = PlainData(test.take(np.arange(lo, min(rows, lo + per_rank))), schema, plain)

            def plain_run(batch: int) -> Callable[[], float]:
                def run() -> float:
                    t0 = time.perf_counter()
                    plain_scores(pdata_rank, plain, batch, pdata_rank.rows)
                    if world > 1:
                        dist.barrier()
                    return rows / (time.perf_counter() - t0)

                return run

            # The plain loop at our data batch and at a cache-sized one (whichever is faster counts).
            contestants = {"ours": ours, f"plain@{args.score_batch}": plain_run(args.score_batch),
                           "plain@1024": plain_run(1024)}
            if args.ours_only:
                contestants = {"ours": ours}
            for fn in contestants.values():
                fn()
            rates, peaks = rounds(contestants, args.rounds, world)
            all_peaks += peaks
            results["score"] = rates
            if ctx.is_main and not args.ours_only:
                report(f"scoring ({rows:,} rows per round, batch {args.score_batch}; ours includes torchrec metrics "
                       f"and the gather; rows/s over all ranks)", rates, fwd_flops, peaks, world)
                print(f"(ours' exact AUC/GAUC on rank 0 afterwards: median {statistics.median(scoring_t):.2f} s "
                      f"per round, not in the rate)")
    if args.json is not None and ctx.is_main:
        write_json(args.json, {"world_size": world, "threads": torch.get_num_threads(),
                                "matmul_peak_per_rank": statistics.median(all_peaks),
                                "matmul_peak_rounds": all_peaks, **results})
    close_distributed(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
