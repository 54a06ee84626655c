"""Gradient-based balancers under 2-rank DMP/DDP (gloo): every rank must end with the same weights."""

import json
import os
import socket

import pytest
import torch.multiprocessing as mp

from tests.mtl_helpers import esmm_tasks, small_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str, balancers: list) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2",
         "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    )
    import torch

    torch.set_num_threads(1)
    from mtl_torchrec.data.sources import load_data
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows.training import make_trainer

    ctx = init_distributed("gloo")
    for balancer in balancers:
        run_dir = os.path.join(out_dir, balancer)
        cfg = small_config(run_dir, [f"train.loss_balance={balancer}", "model.backbone=mmoe",
                                     "train.sharding=table_wise", "train.max_steps=6"] + esmm_tasks())
        trainer = make_trainer(cfg, load_data(cfg.data), ctx, cfg.run_dir)
        trainer.fit()
        weights = trainer.loss_weights()
        trainer.close()
        with open(os.path.join(run_dir, f"weights_{rank}.json"), "w") as f:
            json.dump(weights, f)
    close_distributed(ctx)


@pytest.mark.slow
def test_two_ranks_agree_on_weights(tmp_path):
    balancers = ["gradnorm", "mgda_ub"]
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path), balancers), nprocs=2, start_method="spawn")
    for balancer in balancers:
        w0 = json.loads((tmp_path / balancer / "weights_0.json").read_text())
        w1 = json.loads((tmp_path / balancer / "weights_1.json").read_text())
        assert w0 == pytest.approx(w1, abs=1e-6), balancer
        assert sum(w0.values()) == pytest.approx(3.0, rel=1e-4), balancer
        assert (tmp_path / balancer / "diagnostics.json").is_file()
