"""Id features without a vocabulary: TorchRec's managed-collision EBC as a ``KJT -> [B, d]`` feature module.

The data gives each raw id a stable 63-bit key (``vocab: zch``); inside the model, TorchRec's
``MCHManagedCollisionModule`` (``torchrec.modules.mc_modules``, one per table) maps keys to table
rows and ``ManagedCollisionEmbeddingBagCollection`` looks the rows up. Each table of ``size`` rows
keeps ``size - 1`` keys on rows of their own; the last row is shared by every key not in the table
(new ids until they are merged in, and ids evicted or never admitted). In training, every
``eviction_interval`` steps the keys seen since are merged in, evicting the lowest-scored ones of a
full table by the eviction policy (LFU / LRU / distance-weighted LFU); in evaluation mode the module
only looks up, so scoring never changes the mapping. The mapping is a set of buffers of the module,
so it is part of the state dict (and of DCP checkpoints, row-wise sharded with the table by
TorchRec's MC sharders).

TorchRec's other module, ``HashZchManagedCollisionModule`` (``torchrec.modules.hash_mc_modules``,
multi-probe ZCH), cannot insert on CPU: fbgemm's CPU kernel of ``zero_collision_hash`` runs only
read-only (``Expected readonly to be true``), so training would need a GPU; the MCH module is pure
PyTorch and runs on both.

:class:`ManagedCollisionFeatures` also counts, per table, the lookups of training steps, those
that read the shared row, and the keys inserted and evicted (:func:`managed_collision_stats`).

Example::

    features = ManagedCollisionFeatures([SparseFeature("user", 1000, managed=ManagedCollision(1000))], 16)
    features(kjt).shape        # [B, 16]
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
from torchrec.modules.mc_modules import (
    DistanceLFU_EvictionPolicy,
    LFU_EvictionPolicy,
    LRU_EvictionPolicy,
    ManagedCollisionCollection,
    MCHEvictionPolicy,
    MCHManagedCollisionModule,
)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from mtl_torchrec.data.schema import EVICTION_POLICIES, SparseFeature

# TorchRec's MCH eviction policy of each ``zch.eviction`` name.
POLICIES: Dict[str, Callable[[], MCHEvictionPolicy]] = {
    "lfu": LFU_EvictionPolicy,
    "lru": LRU_EvictionPolicy,
    "distance_lfu": DistanceLFU_EvictionPolicy,
}
assert tuple(POLICIES) == EVICTION_POLICIES

# The counters of each table (training steps only), summed over ranks by managed_collision_stats.
COUNTERS = ("lookups", "shared_row_lookups", "inserted", "evicted")


def _occupied(module: MCHManagedCollisionModule) -> int:
    """Keys the module's table holds now (its rows less the shared row, less the open slots)."""
    return int(module.output_size()) - 1 - int(module.open_slots().item())


class ManagedCollisionFeatures(nn.Module):
    """The ``managed`` (``vocab: zch``) id features: one table per feature, keys remapped to rows by
    TorchRec's MCH module, pooled by an EBC inside TorchRec's ``ManagedCollisionEmbeddingBagCollection``
    (sharded row-wise by TorchRec's MC sharders under DistributedModelParallel).

    Args:
        features: id features with ``managed`` set (each its own table ``t_<table_name>``).
        embedding_dim: width of every table.
        device: where the tables and the remapping state live (``meta`` defers them to DMP).

    ``forward(kjt)`` returns ``[B, len(features) * embedding_dim]``: each feature's pooled embedding
    in ``features`` order (``groups`` names the parts). Raises ValueError for an empty ``features``,
    a feature without ``managed`` or an unknown eviction policy.

    Example::

        m = ManagedCollisionFeatures([SparseFeature("item", 100, managed=ManagedCollision(100, "lru"))], 8)
        m(KeyedJaggedTensor(keys=["item"], values=torch.tensor([2**40]), lengths=torch.tensor([1]))).shape  # [1, 8]
    """

    def __init__(self, features: Sequence[SparseFeature], embedding_dim: int,
                 device: Optional[torch.device] = None) -> None:
        super().__init__()
        if not features:
            raise ValueError("ManagedCollisionFeatures needs at least one feature")
        device = device or torch.device("cpu")
        configs: List[EmbeddingBagConfig] = []
        remappers: Dict[str, nn.Module] = {}
        for f in features:
            if f.managed is None:
                raise ValueError(f"sparse feature '{f.name}' has no managed-collision settings (vocab: zch)")
            if f.managed.eviction not in POLICIES:
                raise ValueError(f"sparse feature '{f.name}': unknown eviction policy '{f.managed.eviction}' "
                                 f"(known: {list(POLICIES)})")
            name = f"t_{f.table_name}"
            configs.append(EmbeddingBagConfig(
                name=name, embedding_dim=embedding_dim, num_embeddings=f.managed.size, feature_names=[f.name],
                pooling=PoolingType.MEAN if f.pooling == "mean" else PoolingType.SUM))
            remappers[name] = MCHManagedCollisionModule(
                zch_size=f.managed.size, device=device, eviction_policy=POLICIES[f.managed.eviction](),
                eviction_interval=f.managed.eviction_interval, name=name)
        # return_remapped_features: the rows each key read, for the shared-row counts of training steps.
        self.embedding = ManagedCollisionEmbeddingBagCollection(
            EmbeddingBagCollection(tables=configs, device=device), ManagedCollisionCollection(remappers, configs),
            return_remapped_features=True)
        self.names: List[str] = [f.name for f in features]
        # Rows per table (``t_<table>``).
        self.rows: Dict[str, int] = {c.name: int(c.num_embeddings) for c in configs}
        self.out_features = embedding_dim * len(features)
        # The parts of the output, for the model's feature groups (feature attention, diagnostics).
        self.groups: List[Tuple[str, int]] = [(n, embedding_dim) for n in self.names]
        # Training-step counters per table (COUNTERS), of this process; see managed_collision_stats.
        self.counts: Dict[str, Dict[str, int]] = {c.name: dict.fromkeys(COUNTERS, 0) for c in configs}
        self.table_of: Dict[str, str] = {n: c.name for c in configs for n in c.feature_names}
        self._found: Optional[Dict[str, MCHManagedCollisionModule]] = None

    def forward(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """``[B, out_features]``: the pooled embeddings of ``names`` (other keys of ``sparse`` are ignored)."""
        # Not while TorchRec's pipeline traces the model (the counts read concrete tensors).
        counting = self.training and not torch.fx._symbolic_trace.is_fx_symbolic_tracing()
        remappers = self._remappers() if counting else {}
        if counting:
            self._size_history(sparse, remappers)
        before = {t: (m._current_iter, int(m.open_slots().item())) for t, m in remappers.items()}
        # Indexed, not unpacked: TorchRec's pipeline tracer keeps the (sharded) module a leaf (a proxy).
        out = self.embedding(sparse)
        pooled = out[0].to_dict()
        if counting:
            self._count(sparse, out[1], remappers, before)
        return torch.cat([pooled[n] for n in self.names], dim=1)

    def remappers(self) -> Dict[str, MCHManagedCollisionModule]:
        """Table name -> the MCH module of this process (under DMP: of the rank's shard of the table)."""
        return {name.split(".")[-1]: m for name, m in self.named_modules() if isinstance(m, MCHManagedCollisionModule)}

    def _remappers(self) -> Dict[str, MCHManagedCollisionModule]:
        # Found at the first training step, once DMP has put its sharded modules in place.
        if self._found is None:
            self._found = self.remappers()
        return self._found

    def _size_history(self, sparse: KeyedJaggedTensor, remappers: Dict[str, MCHManagedCollisionModule]) -> None:
        """Sizes each remapper's buffer of the keys it records between merges before its first step.

        TorchRec's MCH module sizes it at 1.25 x the keys of its first training step (times the
        eviction interval) and drops the keys of later steps that do not fit, so a resumed run, whose
        first step is another, would count other keys than an uninterrupted one; and under row-wise
        sharding a rank's module receives a varying share of the global batch. Sized here for the
        whole global batch (rows x ranks x the first batch's keys per row), a single-valued feature
        never overflows it, whatever step a process starts at.
        """
        keys = None
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        for name in self.names:
            m = remappers[self.table_of[name]]
            if m._input_history_buffer_size != -1:
                continue
            keys = keys if keys is not None else sparse.to_dict()
            rows = max(1, int(sparse.stride()))
            per_row = max(1, -(-int(keys[name].values().numel()) // rows))
            n = rows * world * per_row
            m._init_history_buffers({name: JaggedTensor(values=torch.zeros(n, dtype=torch.int64),
                                                        lengths=torch.ones(n, dtype=torch.int32))})

    def _count(self, sparse: KeyedJaggedTensor, remapped: Any, remappers: Dict[str, MCHManagedCollisionModule],
               before: Dict[str, Tuple[int, int]]) -> None:
        """Adds one training step to :attr:`counts`: the step's lookups of this process's rows and those
        that read a shared row (from the remapped ids), the keys this process's remappers inserted and
        evicted (from their state). A pass whose remappers did not record it (a lookup-only pass, see
        :func:`lookup_only`) is not counted."""
        advanced = {t: m._current_iter != before[t][0] for t, m in remappers.items()}
        keys = sparse.to_dict()
        rows = remapped.to_dict()
        for name in self.names:
            table = self.table_of[name]
            if not advanced[table]:
                continue
            m = remappers[table]
            counts = self.counts[table]
            ids, raw = rows[name].values(), keys[name].values()
            counts["lookups"] += int(ids.numel())
            counts["shared_row_lookups"] += int((ids == _shared_rows(m, raw)).sum())
        for table, m in remappers.items():
            # The step merged keys in (every eviction_interval steps): the slots it filled or took over.
            if advanced[table] and m._last_eviction_iter == m._current_iter:
                replaced = int(m._evicted_emb_indices.numel())
                filled = before[table][1] - int(m.open_slots().item())
                self.counts[table]["inserted"] += replaced
                self.counts[table]["evicted"] += replaced - filled


def _shared_rows(m: MCHManagedCollisionModule, keys: torch.Tensor) -> torch.Tensor:
    """The shared row (as a row of its shard, as TorchRec returns remapped ids) that each key would
    read: row-wise sharding splits the table into the shards of ``m``'s output segments and routes a
    key to shard ``key // ceil(input_size / shards)``; each shard's last row is its shared one."""
    segments = m._output_segments_tensor
    segments = segments[segments >= 0]
    sizes = segments[1:] - segments[:-1]
    block = -(-m.input_size() // len(sizes))
    shard = torch.clamp(keys // block, max=len(sizes) - 1)
    return sizes.to(keys.device)[shard] - 1


def managed_collision_stats(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """Per managed-collision table of ``model`` (the ``t_<table>`` name): ``rows``, ``keys_held``
    (keys on rows of their own now), and since this process started training: ``lookups``,
    ``shared_row_lookups`` (keys that read the shared row: new, evicted or never admitted ids, the
    collisions of a managed table), ``shared_row_share`` (their share of the lookups, None without
    lookups), ``inserted`` (keys given a row) and ``evicted`` (keys that lost theirs to another).
    Summed over ranks when a process group is up: a collective, every rank calls it. Empty for a
    model without such tables.

    Example::

        managed_collision_stats(model)["t_user_id"]["evicted"]
    """
    found = [m for m in model.modules() if isinstance(m, ManagedCollisionFeatures)]
    rows: Dict[str, int] = {}
    local: Dict[str, List[int]] = {}
    for features in found:
        rows.update(features.rows)
        held = {table: _occupied(m) for table, m in features.remappers().items()}
        for table, counts in features.counts.items():
            local[table] = [held.get(table, 0)] + [counts[c] for c in COUNTERS]
    if not local:
        return {}
    tables = sorted(local)
    totals = torch.tensor([local[t] for t in tables], dtype=torch.int64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals)
    out: Dict[str, Dict[str, Any]] = {}
    for table, row in zip(tables, totals.tolist()):
        stats: Dict[str, Any] = {"rows": rows.get(table), "keys_held": row[0]}
        stats.update(zip(COUNTERS, row[1:]))
        stats["shared_row_share"] = stats["shared_row_lookups"] / stats["lookups"] if stats["lookups"] else None
        out[table] = stats
    return out


@contextmanager
def lookup_only(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s managed-collision remappers only look up (evaluation mode: no key
    is recorded, inserted or evicted) whatever the model's own mode; their modes are restored after.
    For forward passes on held-out rows during training (diagnostics).

    Example::

        with torch.no_grad(), lookup_only(model):
            shared = model.fuse(batch.sparse, batch.dense)
    """
    remappers = [m for m in model.modules() if isinstance(m, MCHManagedCollisionModule)]
    modes = [m.training for m in remappers]
    for m in remappers:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(remappers, modes):
            m.train(mode)


def has_managed_collisions(model: nn.Module) -> bool:
    """Whether ``model`` holds a :class:`ManagedCollisionFeatures` (its export is traced first: TorchRec's
    MCH module scripts only as part of an FX trace)."""
    return any(isinstance(m, ManagedCollisionFeatures) for m in model.modules())
