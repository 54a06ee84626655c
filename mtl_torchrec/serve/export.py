"""Inference artifacts of a trained run: a TorchScript model (fp32 or INT8 tables) plus the fitted
preprocessing as JSON, and :func:`load_artifact`, the documented loader that applies it.

An artifact is a folder (written under a temporary name, then renamed)::

    model.pt              TorchScript ScoringModel: forward(values, lengths, dense) -> {name: [B]}
    artifact.json         package / torch / torchrec versions, precision, the checkpoint, the model's
                          inputs (sparse keys in order, dense features) and outputs, and the data spec
                          (feature columns, separators, vocabulary modes, text keys; labels are optional)
    preprocessing.json    the run's fitted vocabularies, normalisers and text rows (plain JSON)
    calibration.json      only when the run has a calibration fitted for the exported checkpoint

``model.pt`` loads with ``torch.jit.load`` in a process that imported only ``torch`` and
``fbgemm_gpu`` (the embedding kernels): neither mtl_torchrec nor TorchRec is needed to run it on
tensors. Raw rows (a DataFrame of the feature columns) go through :meth:`Artifact.predict`, which
maps them with ``preprocessing.json`` by the training data path, so ids, unseen categories (the
out-of-vocabulary row), hashing, missing dense values and text keys are handled as in training.

fp32 artifacts are ``torch.jit.script`` of the model with its plain EmbeddingBagCollection. INT8
artifacts quantise every embedding table row-wise to int8 with TorchRec's inference quantisation
(``torchrec.inference.modules.quantize_embeddings``: fbgemm's CPU/GPU int8 table kernels, dense
layers stay fp32), trace the model with TorchRec's FX tracer and script the trace.

Example::

    export_run(Path("runs/census"), Path("artifacts/census"), int8=False)
    artifact = load_artifact("artifacts/census")
    artifact.predict(df)                   # DataFrame: row, click, rating, ...
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
import torchrec

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.core.io import write_json
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.preprocessing import FILE_NAME as PREPROCESSING_FILE
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.schema import Schema
from mtl_torchrec.data.spec import DataSpec, spec_from_dict
from mtl_torchrec.data.spec.build import check_feature_layout
from mtl_torchrec.data.spec.features import FeatureRows, feature_spec
from mtl_torchrec.eval.calibration import CALIBRATION_FILE, Calibration
from mtl_torchrec.modules.managed_collision import has_managed_collisions
from mtl_torchrec.serve.predict import output_names, rows_per_step
from mtl_torchrec.serve.runs import LoadedRun, load_run
from mtl_torchrec.serve.scoring import ScoringModel, scoring_inputs

ARTIFACT_FILE = "artifact.json"
MODEL_FILE = "model.pt"
# torch.export program (``--format export``), loaded with ``torch.export.load(...).module()``.
PROGRAM_FILE = "model.pt2"
ARTIFACT_FORMAT = "mtl_torchrec-artifact"
ARTIFACT_VERSION = 1
PRECISIONS = ("fp32", "int8")
FORMATS = ("torchscript", "export")


def package_version() -> str:
    """The installed mtl_torchrec version (``0+unknown`` when run from a tree that is not installed)."""
    try:
        return metadata.version("mtl_torchrec")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def scoring_module(run: LoadedRun, int8: bool = False) -> torch.nn.Module:
    """The run's model in scoring form (a copy: the run's own module is left as it is), its tables
    quantised to int8 when ``int8``; not yet scripted."""
    model = copy.deepcopy(run.module.model).eval()
    keys = [f.name for f in model_schema(run).sparse]
    scoring = ScoringModel.from_model(model, run.tasks, keys)
    if int8:
        from torchrec.inference.modules import quantize_embeddings

        scoring = quantize_embeddings(scoring, dtype=torch.qint8, inplace=True)
    return scoring.eval()


def model_schema(run: LoadedRun) -> Schema:
    """The schema of the rows the model reads: its sparse features in batch order (text features
    only when the run uses them) and its dense columns, from every feature kind of the run's spec."""
    spec = feature_spec(run.spec, _spec_columns(run.spec), text=run.cfg.model.text.enabled)
    return FeatureRows(spec, run.preprocessing).schema


def _spec_columns(spec: DataSpec) -> List[str]:
    return spec.raw_columns()


def script_module(scoring: torch.nn.Module, int8: bool) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of the scoring module; an int8 one, or one with managed-collision tables
    (``vocab: zch``), is traced with TorchRec's FX tracer first (the quantised EBC and TorchRec's MCH
    module script only as part of a trace)."""
    managed = has_managed_collisions(scoring)
    if not int8 and not managed:
        return torch.jit.script(scoring)
    import torchrec.fx

    if managed:
        # One evaluation-mode call (no remapping state changes) fixes the managed-collision modules'
        # feature order before the trace records it.
        k = len(scoring.keys)
        scoring(torch.zeros(k, dtype=torch.int64), torch.ones(k, dtype=torch.int32), torch.zeros(1, scoring.num_dense))

    return torch.jit.script(torchrec.fx.symbolic_trace(scoring))


def export_program(scoring: torch.nn.Module, num_keys: int, num_dense: int) -> Any:
    """``torch.export`` of the (fp32) scoring module with a dynamic batch dimension: ``dense`` is
    ``[B, num_dense]``, ``lengths`` ``[num_keys * B]`` and ``values`` of any length. Traced non-strict
    (TorchRec's KJT is not strict-exportable) on a batch of 2 rows of id 0."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    ids = torch.export.Dim("ids", min=1, max=1 << 30)
    example = (torch.zeros(num_keys * 2, dtype=torch.int64), torch.ones(num_keys * 2, dtype=torch.int32),
               torch.zeros(2, num_dense))
    shapes = ({0: ids}, {0: num_keys * batch}, {0: batch})
    return torch.export.export(scoring, example, dynamic_shapes=shapes, strict=False)


def export_run(run_dir: Path, out: Path, int8: bool = False, fmt: str = "torchscript",
               checkpoint: Optional[str] = None, calibrate: bool = True, overwrite: bool = False) -> Path:
    """Writes the artifact of ``run_dir`` (see the module docstring) to ``out``; returns ``out``.

    Raises ConfigError for an unknown ``fmt`` or an existing ``out`` (without ``overwrite``), and
    what :func:`~mtl_torchrec.serve.runs.load_run` raises (a run without fitted preprocessing is a
    DataError saying so).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format: '{fmt}' is not available (choose from {list(FORMATS)})")
    if fmt == "export" and int8:
        raise ConfigError("--int8: INT8 tables are exported as TorchScript only (use --format torchscript)")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"--out: {out} exists (remove it or pass --overwrite)")
    run = load_run(Path(run_dir), checkpoint, calibrate=calibrate)
    scoring = scoring_module(run, int8)
    if fmt == "export" and has_managed_collisions(scoring):
        # torch.export of TorchRec's MCH lookup fails ("Node.meta wrap_with_set_grad_enabled is missing val").
        raise ConfigError("--format: 'export' cannot export vocab: zch (managed-collision) tables; use --format "
                          "torchscript")
    schema = model_schema(run)
    keys = schema.sparse
    model: Any = (script_module(scoring, int8) if fmt == "torchscript"
                  else export_program(scoring, len(keys), len(schema.dense)))
    info = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "package_version": package_version(),
        "torch_version": torch.__version__,
        "torchrec_version": getattr(torchrec, "__version__", "unknown"),
        "model_format": fmt,
        "model_file": MODEL_FILE if fmt == "torchscript" else PROGRAM_FILE,
        "precision": "int8" if int8 else "fp32",
        "run": str(Path(run_dir).resolve()),
        "checkpoint": run.checkpoint.name,
        "checkpoint_step": run.step,
        "inputs": {"sparse": [f.name for f in keys],
                   "dense": [d.name for d in schema.dense]},
        "outputs": output_names(run),
        "tasks": [{"name": t.name, "type": t.type, "esmm_parent": t.esmm_parent} for t in run.tasks],
        "text_features": bool(run.cfg.model.text.enabled),
        "eval_batch_size": run.cfg.data.eval_batch_size,
        "spec": dataclasses.asdict(run.spec),
    }
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if fmt == "torchscript":
            model.save(str(tmp / MODEL_FILE))
        else:
            torch.export.save(model, str(tmp / PROGRAM_FILE))
        run.preprocessing.save(tmp)
        if run.calibration is not None:
            run.calibration.save(tmp / CALIBRATION_FILE)
        write_json(tmp / ARTIFACT_FILE, info)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


@dataclass
class Artifact:
    """A loaded artifact: the ``model`` (TorchScript, or the ``torch.export`` program's module), its ``info`` (``artifact.json``), the data spec
    and fitted preprocessing, and the calibration (None without one)."""

    path: Path
    model: Any
    info: Dict[str, Any]
    spec: DataSpec
    preprocessing: Preprocessing
    calibration: Optional[Calibration]

    def predict(self, frame: pd.DataFrame, batch_size: Optional[int] = None,
                keep: Sequence[str] = ()) -> pd.DataFrame:
        """Scores raw rows (the feature columns; labels optional) as ``mtl-torchrec predict`` does:
        ``row``, the ``keep`` columns, the predictions (calibrated when the artifact has a
        calibration, then also ``<name>_raw``). DataError naming missing feature columns or a bad row."""
        spec = feature_spec(self.spec, list(frame.columns), text=bool(self.info["text_features"]),
                            where="the DataFrame", labels=False)
        missing = [c for c in keep if c not in frame.columns]
        if missing:
            raise ConfigError(f"keep: column(s) {missing} are not in the DataFrame (columns: {sorted(frame.columns)})")
        rows = FeatureRows(spec, self.preprocessing)
        part = rows.convert_frame(frame)
        size = rows_per_step(batch_size, int(self.info.get("eval_batch_size") or 4096))
        parts: Dict[str, List[np.ndarray]] = {}
        with torch.no_grad():
            for start in range(0, len(part.table), size):
                idx = np.arange(start, min(start + size, len(part.table)))
                out = self.model(*scoring_inputs(Batch.from_table(part.table.take(idx), rows.schema)))
                for name, value in out.items():
                    parts.setdefault(name, []).append(value.double().numpy())
        # In the artifact's output order (the scripted model's dict has its own order).
        raw = {k: np.concatenate(parts[k]) if k in parts else np.zeros(0) for k in self.info["outputs"]}
        scores = dict(raw)
        if self.calibration is not None:
            scores = self.calibration.apply_numpy(raw)
            scores.update({f"{k}_raw": v for k, v in raw.items()})
        cols: Dict[str, Any] = {"row": part.rows.astype(np.int64)}
        source = frame.reset_index(drop=True)
        for c in keep:
            cols[c] = source[c].to_numpy()[part.rows]
        cols.update(scores)
        return pd.DataFrame(cols)


def load_artifact(path: Union[str, Path]) -> Artifact:
    """Loads an artifact folder written by :func:`export_run`.

    Raises FileNotFoundError (not an artifact folder), DataError when it was written by another
    mtl_torchrec version or artifact format (re-export it from the run with this version), or when
    a file of it is missing or damaged (``artifact.json`` keys, ``preprocessing.json``, the model
    file) or its spec's features differ from those the preprocessing was fitted on; each names the file.
    """
    path = Path(path)
    info_path = path / ARTIFACT_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{path}: not an export artifact (no {ARTIFACT_FILE})")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{info_path}: cannot be read: {e}") from None
    if not isinstance(info, dict) or info.get("format") != ARTIFACT_FORMAT:
        raise DataError(f"{info_path}: not an mtl_torchrec artifact description")
    if info.get("format_version") != ARTIFACT_VERSION:
        raise DataError(f"{info_path}: artifact format_version {info.get('format_version')!r}, this mtl_torchrec "
                        f"reads {ARTIFACT_VERSION}; export the run again")
    if info.get("package_version") != package_version():
        raise DataError(f"{info_path}: exported by mtl_torchrec {info.get('package_version')}, this is "
                        f"{package_version()}; export the run again with this version (or load it with that one)")
    missing_keys = [k for k in ("spec", "outputs", "model_format", "text_features") if k not in info]
    if missing_keys:
        raise DataError(f"{info_path}: no {missing_keys} (a damaged artifact; export the run again)")
    if not (path / PREPROCESSING_FILE).is_file():
        raise DataError(f"{path}: the artifact has no {PREPROCESSING_FILE}")
    try:
        pre = Preprocessing.load(path)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path / PREPROCESSING_FILE}: cannot be read ({type(e).__name__}: {e})") from None
    try:
        spec = spec_from_dict(info["spec"])
    except (ConfigError, TypeError, ValueError) as e:
        raise DataError(f"{info_path}: its spec cannot be read ({e})") from None
    # The spec decides the model's input order; one edited in the artifact would feed other columns.
    check_feature_layout(spec, pre)
    calibration = Calibration.load(path / CALIBRATION_FILE) if (path / CALIBRATION_FILE).is_file() else None
    if info.get("precision") == "int8":
        import fbgemm_gpu  # noqa: F401  (registers the int8 table kernels the scripted model calls)
    model_file = path / (PROGRAM_FILE if info.get("model_format") == "export" else MODEL_FILE)
    if not model_file.is_file():
        raise DataError(f"{model_file}: missing from the artifact")
    try:
        if info.get("model_format") == "export":
            import fbgemm_gpu  # noqa: F401,F811  (the program calls fbgemm's table kernels)

            model = torch.export.load(str(model_file)).module()
        else:
            model = torch.jit.load(str(model_file), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as e:
        raise DataError(f"{model_file}: cannot be loaded, damaged? ({type(e).__name__}: {str(e)[:200]})") from None
    return Artifact(path, model, info, spec, pre, calibration)
