"""The silenced library warnings: each filter drops exactly its message, and the claims that make
them harmless still hold for the installed torch / torchrec / fbgemm."""

from __future__ import annotations

import logging
import warnings
from typing import Iterator, List

import pytest
import torch
import torch.nn.functional as F

from mtl_torchrec.launch.quiet import KNOWN_LOG_RECORDS, KNOWN_WARNINGS, silence_known_warnings

# A module each known warning is attributed to in a real run (the file torch/torchrec report).
SEEN_IN = {
    "HeuristicalStorageReservation is known to cause issues": ["torchrec.distributed.planner.planners"],
    "`broadcast_buffers` is deprecated": ["torchrec.distributed.embeddingbag", "torchrec.distributed.model_parallel"],
    "fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered": ["torch.autograd.graph"],
    "Please use DTensor instead and we are deprecating ShardedTensor": [
        "torch.distributed.checkpoint.planner_helpers",
        "torch.distributed.checkpoint.default_planner",
    ],
    "`torch.distributed.all_gather_into_tensor` is deprecated": ["torch.distributed.c10d_logger"],
    "`torch.distributed.reduce_scatter_tensor` is deprecated": ["torch.distributed.c10d_logger"],
}


def _shown(message: str, category: type, module: str) -> bool:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_known_warnings()
        warnings.warn_explicit(message, category, "somewhere.py", 1, module=module)
    return bool(seen)


def test_every_known_warning_says_where_it_was_seen() -> None:
    assert sorted(SEEN_IN) == sorted(w.message for w in KNOWN_WARNINGS)
    assert all(w.why for w in KNOWN_WARNINGS) and all(r.why for r in KNOWN_LOG_RECORDS)


@pytest.mark.parametrize("known", KNOWN_WARNINGS, ids=lambda w: w.message[:30])
def test_each_warning_filter_drops_only_its_message(known) -> None:
    text = known.message + " (and the rest of the library's text)"
    for module in SEEN_IN[known.message]:
        assert not _shown(text, known.category, module)
        # Another message from the same module, the same message from another module or of
        # another category: all still shown.
        assert _shown("something else entirely", known.category, module)
        assert _shown(text, RuntimeWarning, module)
    assert _shown(text, known.category, "mtl_torchrec.model.multitask")


@pytest.fixture
def records() -> Iterator[List[logging.LogRecord]]:
    """Records that reach a handler on each known logger (set to WARNING for the test)."""
    seen: List[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record not in seen:  # a record of a child logger also reaches the root's handler
                seen.append(record)

    handler = Keep()
    loggers = {r.logger: (logging.getLogger() if r.logger == "root" else logging.getLogger(r.logger))
               for r in KNOWN_LOG_RECORDS}
    levels = {name: lg.level for name, lg in loggers.items()}
    for lg in loggers.values():
        lg.addHandler(handler)
        lg.setLevel(logging.WARNING)
    try:
        yield seen
    finally:
        for name, lg in loggers.items():
            lg.removeHandler(handler)
            lg.setLevel(levels[name])


@pytest.mark.parametrize("known", KNOWN_LOG_RECORDS, ids=lambda r: r.logger)
def test_each_log_filter_drops_only_its_message(known, records) -> None:
    silence_known_warnings()
    silence_known_warnings()  # idempotent: one filter per logger
    logger = logging.getLogger() if known.logger == "root" else logging.getLogger(known.logger)
    assert sum(type(f).__name__ == "_DropKnown" for f in logger.filters) == 1
    logger.warning(known.message + "model.embedding.t_user_id")
    assert not [r for r in records if r.name == logger.name]
    logger.warning("another message of the same logger")
    logger.error("an error: " + known.message)
    assert [r.getMessage() for r in records if r.name == logger.name] == [
        "another message of the same logger", "an error: " + known.message]


@pytest.mark.parametrize("pooling", ["SUM", "MEAN"])
def test_dense_table_lookup_gradient_is_right_despite_the_autograd_warning(pooling: str) -> None:
    """fbgemm's CPU lookup for data_parallel tables warns that it has no autograd kernel; its
    output and its weight gradient equal torch's embedding_bag on the same tables."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import DenseTableBatchedEmbeddingBagsCodegen

    torch.manual_seed(0)
    tables, batch = [(50, 8), (30, 4)], 6
    tbe = DenseTableBatchedEmbeddingBagsCodegen(tables, pooling_mode=getattr(PoolingMode, pooling), use_cpu=True)
    lengths = torch.randint(0, 4, (len(tables) * batch,))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    indices = torch.cat([torch.randint(0, tables[i // batch][0], (int(n),)) for i, n in enumerate(lengths)])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = tbe(indices, offsets)
        upstream = torch.randn_like(out)
        (out * upstream).sum().backward()
    assert any("an autograd kernel was not registered" in str(w.message) for w in seen), "the warning is gone"

    weights = tbe.weights.detach().clone().requires_grad_(True)
    parts = torch.split(weights, [rows * dim for rows, dim in tables])
    ref = []
    for t, (rows, dim) in enumerate(tables):
        o = offsets[t * batch:(t + 1) * batch + 1]
        ref.append(F.embedding_bag(indices[o[0]:o[-1]], parts[t].view(rows, dim), o[:-1] - o[0], mode=pooling.lower()))
    reference = torch.cat(ref, dim=1)
    (reference * upstream).sum().backward()
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(tbe.weights.grad, weights.grad)
    assert weights.grad.abs().sum() > 0


def test_a_directly_built_topology_equals_the_factory_one() -> None:
    from torchrec.distributed.planner.types import KernelConfig, Topology, TopologyFactory, TrainerConfig

    direct = Topology(world_size=2, compute_device="cpu", local_world_size=2)
    made = TopologyFactory.create_topology(TrainerConfig(world_size=2, local_world_size=2),
                                           kernel_config=KernelConfig(compute_device="cpu"))

    def plain(value: object) -> str:
        # Objects without their own repr (the bandwidths) are compared by their attributes.
        return repr(vars(value)) if type(value).__repr__ is object.__repr__ else repr(value)

    def described(t: Topology) -> dict:
        return {k: plain(v) for k, v in vars(t).items() if k != "_created_by_factory"}

    assert described(direct) == described(made)
