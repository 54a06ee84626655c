"""default_sharders / check_sharders: the stock list leaves a frozen table unsharded (an error
naming its path), ours shards it; real DMP on one gloo rank."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mtl_torchrec.distributed.sharding import check_sharders, default_sharders
from mtl_torchrec.modules.frozen_ebc import FrozenEmbeddingBagCollection, FrozenEmbeddingBagCollectionSharder
from tests.ranks import run_ranks


class _Model(nn.Module):
    def __init__(self, device=None) -> None:
        super().__init__()
        self.ids = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name="t_item", embedding_dim=8, num_embeddings=50, feature_names=["item"])],
            device=device,
        )
        self.text = nn.Module()
        self.text.table = FrozenEmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name="t_text", embedding_dim=8, num_embeddings=20, feature_names=["text"])],
            device=device,
        )
        self.out = nn.Linear(16, 1)


def test_stock_sharders_are_refused_naming_the_module() -> None:
    with pytest.raises(ValueError, match=r"^text\.table: a FrozenEmbeddingBagCollection .*default_sharders"):
        check_sharders(_Model(), get_default_sharders())


def test_default_sharders_cover_the_frozen_table() -> None:
    sharders = default_sharders()
    check_sharders(_Model(), sharders)
    assert isinstance(sharders[0], FrozenEmbeddingBagCollectionSharder)
    assert len(sharders) == len(get_default_sharders()) + 1
    fused = default_sharders({"learning_rate": 0.5})
    ebc = [s for s in fused if s.module_type is EmbeddingBagCollection]
    assert len(ebc) == 1 and ebc[0].fused_params["learning_rate"] == 0.5
    # The frozen sharder keeps its lr-0 fused optimizer whatever the user passes.
    assert fused[0].fused_params["learning_rate"] == 0.0
    # Sequence tables (EmbeddingCollection): the same fused params, never replicated.
    from torchrec.modules.embedding_modules import EmbeddingCollection

    from mtl_torchrec.distributed.sharding import SequenceTableSharder

    seq = [s for s in fused if s.module_type is EmbeddingCollection]
    assert len(seq) == 1 and isinstance(seq[0], SequenceTableSharder)
    assert seq[0].fused_params["learning_rate"] == 0.5 and "data_parallel" not in seq[0].sharding_types("cpu")


def _rank(rank: int, world_size: int):
    from torchrec.distributed.model_parallel import DistributedModelParallel

    from mtl_torchrec.distributed.context import init_distributed

    ctx = init_distributed()
    kinds = {}
    for name, sharders in (("stock", get_default_sharders()), ("ours", default_sharders())):
        dmp = DistributedModelParallel(_Model(torch.device("meta")), device=ctx.device, sharders=sharders)
        kinds[name] = {p: type(m).__name__ for p, m in dmp.module.named_modules() if p in ("ids", "text.table")}
    torch.distributed.destroy_process_group()
    return kinds


def test_real_dmp_shards_the_frozen_table_only_with_our_sharders() -> None:
    (kinds,) = run_ranks(_rank, 1)
    assert kinds["stock"] == {"ids": "ShardedEmbeddingBagCollection", "text.table": "FrozenEmbeddingBagCollection"}
    assert kinds["ours"] == {"ids": "ShardedEmbeddingBagCollection", "text.table": "ShardedFrozenEmbeddingBagCollection"}
