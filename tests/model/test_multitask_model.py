"""MultiTaskModel's eval forward in row blocks (MultiTaskModel.score_rows) gives what one block gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtl_torchrec.config import load_config
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.model.builder import build_model
from tests.mtl_helpers import SMALL


@pytest.mark.parametrize("extra", [[], ["model.feature_attention.enabled=true"]])
def test_eval_forward_in_row_blocks_equals_one_block(extra):
    cfg = load_config(None, SMALL + extra)
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.schema).eval()
    batch = Batch.from_table(data.splits["test"].take(np.arange(100)), data.schema)
    with torch.no_grad():
        whole = model.head(model.fuse(batch.sparse, batch.dense))
        model.score_rows = 32  # 100 rows: blocks of 32, 32, 32, 4
        blocks = model(batch)
    assert blocks.logits.keys() == whole.logits.keys()
    for name in whole.logits:
        assert blocks.logits[name].shape == (100,)
        torch.testing.assert_close(blocks.logits[name], whole.logits[name], rtol=1e-5, atol=1e-6)
    assert len(blocks.gates) == len(whole.gates) > 0
    for b, w in zip(blocks.gates, whole.gates):
        torch.testing.assert_close(b, w, rtol=1e-5, atol=1e-6)
    # Training never splits: the pipeline traces one forward over the whole batch.
    model.train()
    assert model(batch).logits["click"].shape == (100,)
