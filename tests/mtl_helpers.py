"""Small configs and data shared by the multi-task tests (a plain module, not a conftest)."""

from __future__ import annotations

from typing import List, Sequence

from mtl_torchrec.config import Config, load_config

SMALL = [
    "data.synthetic.num_impressions=3000",
    "data.synthetic.num_users=300",
    "data.synthetic.num_items=200",
    "data.synthetic.num_brands=50",
    "data.batch_size=256",
    "data.eval_batch_size=1024",
    "train.epochs=1",
    "train.progress=false",
    "train.log_every=2",
    "train.diagnostics_every=4",
    "model.embedding_dim=8",
    "model.dense_layers=[8]",
    "model.mmoe.num_experts=3",
    "model.mmoe.expert_layers=[16]",
    "model.ple.num_levels=2",
    "model.ple.num_task_experts=1",
    "model.ple.num_shared_experts=1",
    "model.ple.expert_layers=[16]",
    "model.shared_bottom.layers=[16]",
    "model.single_task.layers=[16]",
    "model.tower_layers=[8]",
]


def small_config(run_dir: str, overrides: Sequence[str] = ()) -> Config:
    cfg = load_config(None, list(SMALL) + list(overrides))
    cfg.run_dir = run_dir
    return cfg


def esmm_tasks() -> List[str]:
    """Overrides making conversion an ESMM task under click."""
    return ["model.tasks=[{name: click}, {name: conversion, esmm_parent: click}, {name: rating, type: regression}]"]


# A small synthetic data set and model: a run of it takes seconds.
SMALL_SYNTHETIC = [
    "data.synthetic.num_impressions=20000",
    "data.synthetic.num_users=2000",
    "data.synthetic.num_items=500",
    "data.batch_size=256",
    "data.eval_batch_size=1024",
    "model.embedding_dim=8",
    "model.dense_layers=[16]",
    "model.mmoe.num_experts=4",
    "model.mmoe.expert_layers=[32]",
    "model.tower_layers=[16]",
]
