"""Silences the library warnings that every run printed and that were checked to be harmless here.

Each filter names one message (its start), its category or logger, and the module it comes from,
so the same text from anywhere else, and every other warning, still shows. Nothing is ignored by
category or by logger alone. The commands call :func:`silence_known_warnings` once before they run
(``cli.main``); scripts that call the library directly may call it too.

Two kinds: Python ``warnings`` (filtered with :func:`warnings.filterwarnings`) and records of
``logging`` loggers that torchrec and torch write to (a :class:`logging.Filter` on that logger, which
sees only the records that logger itself creates). Checked against torch 2.13 / torchrec 1.8 /
fbgemm-gpu 1.8 (``tests/launch/test_quiet.py`` re-checks the claims that can be re-checked). Several come
from tables that the planner places ``data_parallel`` on CPU; they go quiet, that placement does not
change (it is visible in the plan).

The ``[rank0]:`` prefix on torch's own log lines, even in one process, is added by torch's log
formatter (``torch._logging``) whenever a process group is initialised, which ``init_distributed``
does also for one process; the only such line a run printed is the ``is_fx_tracing`` notice below.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from typing import Dict, Tuple, Type


@dataclass(frozen=True)
class KnownWarning:
    """A Python warning: ``message`` (the start of its text), ``category``, ``module`` (a regex the
    start of the warning's module must match, as in :func:`warnings.filterwarnings`) and why it is
    harmless."""

    message: str
    category: Type[Warning]
    module: str
    why: str


@dataclass(frozen=True)
class KnownLogRecord:
    """A log record: the ``logger`` that creates it, the start of its ``message``, why it is harmless."""

    logger: str
    message: str
    why: str


KNOWN_WARNINGS: Tuple[KnownWarning, ...] = (
    KnownWarning(
        "HeuristicalStorageReservation is known to cause issues",
        FutureWarning,
        r"torchrec\.distributed\.planner\.planners",
        "The planner's default memory reservation may over-estimate dense tensors (in dry runs). An estimate "
        "that is too large can only make a plan not fit, which the planner reports as an error, never silently.",
    ),
    KnownWarning(
        "`broadcast_buffers` is deprecated",
        FutureWarning,
        r"torchrec\.distributed\.(embeddingbag|model_parallel)",
        "TorchRec itself wraps modules in DDP with broadcast_buffers=False; the argument still works "
        "as before in torch 2.13, and it is not ours to change.",
    ),
    KnownWarning(
        "fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered",
        UserWarning,
        r"torch\.autograd\.graph",
        "Dense (data_parallel) table lookups on CPU: fbgemm's CPU kernel records its own backward, so the "
        "gradient is right; tests/launch/test_quiet.py checks it against torch's embedding_bag.",
    ),
    KnownWarning(
        "Please use DTensor instead and we are deprecating ShardedTensor",
        FutureWarning,
        r"torch\.distributed\.checkpoint\.",
        "TorchRec 1.8 keeps sharded tables as ShardedTensor, which DCP still saves and loads; a notice "
        "about a future torch.",
    ),
    KnownWarning(
        "`torch.distributed.all_gather_into_tensor` is deprecated",
        FutureWarning,
        r"torch\.distributed\.c10d_logger",
        "TorchRec's sharded lookups on several ranks (row_wise, for one) call this collective by its old "
        "name, which torch 2.13 keeps as an alias of the new one.",
    ),
    KnownWarning(
        "`torch.distributed.reduce_scatter_tensor` is deprecated",
        FutureWarning,
        r"torch\.distributed\.c10d_logger",
        "As above, for reduce_scatter_tensor.",
    ),
)

KNOWN_LOG_RECORDS: Tuple[KnownLogRecord, ...] = (
    KnownLogRecord(
        "torchrec.distributed.planner.types",
        "The topology was constructed directly rather than via TopologyFactory.create_topology()",
        "A notice about a future torchrec: a Topology built directly has the same devices, storage and "
        "bandwidths as TopologyFactory's with the same arguments (tests/launch/test_quiet.py compares them).",
    ),
    KnownLogRecord(
        "torchrec.distributed.planner.storage_reservations",
        "There is a known issue with TorchRec's dense tensor size calculation in dry run scenarios",
        "Runs plan real, materialised modules, not a dry run; see the HeuristicalStorageReservation entry.",
    ),
    KnownLogRecord(
        "root",
        "Sharding spec not found for ",
        "TorchRec's plan check logs this for every data_parallel table, whose plan has no sharding spec by "
        "design (a replicated table has no shards).",
    ),
    KnownLogRecord(
        "torchrec.distributed.utils",
        "Sharding Type is data_parallel, caching params will be ignored",
        "Cache settings apply to UVM-cached GPU tables only; no config sets them.",
    ),
    KnownLogRecord(
        "torch.fx._symbolic_trace",
        "is_fx_tracing will return true for both fx.symbolic_trace and torch.export",
        "A notice about the meaning of torch.fx's is_fx_tracing(), which TorchRec calls; training is "
        "never traced, so it returns False either way.",
    ),
)


class _DropKnown(logging.Filter):
    """Drops the records of one logger whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: Tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


# One filter per logger, so that calling silence_known_warnings again adds nothing.
_LOG_FILTERS: Dict[str, _DropKnown] = {}


def _logger(name: str) -> logging.Logger:
    return logging.getLogger() if name == "root" else logging.getLogger(name)


def silence_known_warnings() -> None:
    """Installs the filters of :data:`KNOWN_WARNINGS` and :data:`KNOWN_LOG_RECORDS` (idempotent)."""
    for w in KNOWN_WARNINGS:
        # filterwarnings matches `message` as a regular expression; these are literal text.
        warnings.filterwarnings("ignore", message=re.escape(w.message), category=w.category, module=w.module)
    prefixes: Dict[str, Tuple[str, ...]] = {}
    for r in KNOWN_LOG_RECORDS:
        prefixes[r.logger] = prefixes.get(r.logger, ()) + (r.message,)
    for name, starts in prefixes.items():
        if name not in _LOG_FILTERS:
            _LOG_FILTERS[name] = _DropKnown(starts)
            _logger(name).addFilter(_LOG_FILTERS[name])
