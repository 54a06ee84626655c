"""A trained run loaded for scoring: its config, data spec, fitted preprocessing, calibration and the
model restored unsharded from a DCP checkpoint (manifest check and restricted loader included,
the same :func:`~mtl_torchrec.distributed.checkpoint.dcp_io.load_checkpoint` evaluation uses).

Example::

    run = load_run(Path("runs/census"), checkpoint="best")
    run.module.model       # MultiTaskModel, evaluation mode, plain EBC with fp32 tables
    run.spec, run.preprocessing, run.calibration
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from mtl_torchrec.config import Config
from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.preprocessing import FILE_NAME, Preprocessing
from mtl_torchrec.data.spec import DataSpec, load_spec, schema_for
from mtl_torchrec.data.spec.build import check_feature_layout
from mtl_torchrec.data.spec.kinds import TextParts
from mtl_torchrec.distributed.checkpoint.dcp_io import load_checkpoint
from mtl_torchrec.eval.calibration import CALIBRATION_FILE, Calibration
from mtl_torchrec.eval.evaluate import load_eval_data, load_run_config, run_checkpoint
from mtl_torchrec.model.builder import build_train_module
from mtl_torchrec.model.tasks import TaskSpec, TrainModule
from mtl_torchrec.model.text import text_cache_root

PREPROCESSING_DIR = "preprocessing"


@dataclass
class LoadedRun:
    """A run ready to score: ``module`` (TrainModule, evaluation mode, unsharded), the run's config,
    data spec (the training spec, labels included) and fitted preprocessing, the checkpoint it came
    from and its step, and the calibration that applies to that step (None without one)."""

    run_dir: Path
    cfg: Config
    spec: DataSpec
    preprocessing: Preprocessing
    module: TrainModule
    checkpoint: Path
    step: Optional[int]
    calibration: Optional[Calibration]

    @property
    def tasks(self) -> List[TaskSpec]:
        """The model's tasks."""
        return list(self.module.tasks)


def load_preprocessing(run_dir: Path, cfg: Config) -> Preprocessing:
    """The run's ``preprocessing/preprocessing.json``. DataError when the run has none (a run of a
    built-in source, whose rows are ids already, or a damaged run) or it cannot be read."""
    path = Path(run_dir) / PREPROCESSING_DIR / FILE_NAME
    if not path.is_file():
        raise DataError(f"{path}: the run has no fitted preprocessing (it was trained on data.source="
                        f"'{cfg.data.source}'); scoring raw rows and export need a run trained on a data spec "
                        f"(data.source=spec), whose vocabularies and normalisers are saved with it")
    try:
        return Preprocessing.load(path.parent)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: the run's saved preprocessing cannot be read: {e}") from None


def run_spec(cfg: Config) -> DataSpec:
    """The run's data spec (``data.spec`` of its config.yaml); ConfigError naming ``data.spec`` when
    the file is gone (relative paths are from the working directory, as in training)."""
    if cfg.data.source != "spec" or not cfg.data.spec:
        raise ConfigError(f"data.source: the run was trained on '{cfg.data.source}', not on a data spec")
    if not Path(cfg.data.spec).is_file():
        raise ConfigError(f"data.spec: '{cfg.data.spec}' not found (relative paths are from the working directory)")
    return load_spec(cfg.data.spec)


def model_bundle(cfg: Config, spec: DataSpec, pre: Preprocessing) -> DataBundle:
    """A row-less bundle with the run's full schema (labels included: the model's tasks are checked
    against them) and its text tables, for building the model before its checkpoint is loaded."""
    bundle = DataBundle(schema=schema_for(spec, pre), splits={}, texts=TextParts(spec, pre, fitted=False).tables(),
                        preprocessing=pre)
    return bundle if cfg.model.text.enabled else bundle.without_text()


def load_run(run_dir: Path, checkpoint: Optional[str] = None, calibrate: bool = True) -> LoadedRun:
    """Loads a run for scoring (every rank of a process group calls it: loading is collective).

    ``checkpoint``: ``latest``, ``best`` or ``step_N`` (default: as ``evaluate`` chooses). The
    run's ``calibration.json`` is used when ``calibrate`` and it was fitted for the loaded step.
    Raises FileNotFoundError (no run directory / checkpoint), DataError (no or unreadable
    preprocessing), ConfigError (the spec is gone) and CheckpointError (damaged or another model).
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    pre = load_preprocessing(run_dir, cfg)
    spec = run_spec(cfg)
    check_feature_layout(spec, pre)
    ckpt = run_checkpoint(cfg, run_dir, checkpoint)
    module = build_train_module(cfg.model, model_bundle(cfg, spec, pre), cfg.train.loss_balance, cfg.train.balance,
                                text_cache=text_cache_root(cfg.model.text, cfg.output_dir))
    meta = load_checkpoint(ckpt, module)
    module.eval()
    step = meta.get("global_step")
    calibration: Optional[Calibration] = None
    if calibrate and (run_dir / CALIBRATION_FILE).is_file():
        calibration = Calibration.load(run_dir / CALIBRATION_FILE)
        if calibration.checkpoint_step != step:
            calibration = None
    return LoadedRun(run_dir, cfg, spec, pre, module, ckpt, step, calibration)


def load_run_with_data(run_dir: Path, checkpoint: Optional[str] = None) -> tuple:
    """``(config, bundle, module)`` of any run, built-in sources included: the run's data as
    evaluation loads it (already mapped to ids; no raw-row preprocessing needed) and the train module
    restored unsharded from the checkpoint (evaluation mode). For benchmarks and quality checks of
    the scoring forms on a run's splits; raises what :func:`load_run` raises."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    ckpt = run_checkpoint(cfg, run_dir, checkpoint)
    bundle = load_eval_data(cfg, run_dir, None)
    bundle = bundle if cfg.model.text.enabled else bundle.without_text()
    module = build_train_module(cfg.model, bundle, cfg.train.loss_balance, cfg.train.balance,
                                text_cache=text_cache_root(cfg.model.text, cfg.output_dir))
    load_checkpoint(ckpt, module)
    return cfg, bundle, module.eval()
