"""Serving a trained run: per-row scores (``predict``) and inference artifacts (``export``).

* :mod:`~mtl_torchrec.serve.runs`: a run loaded for scoring (config, spec, fitted preprocessing,
  the model restored unsharded from its DCP checkpoint, calibration);
* :mod:`~mtl_torchrec.serve.scoring`: :class:`ScoringModel`, the tensor-only, scriptable inference form;
* :mod:`~mtl_torchrec.serve.predict`: :func:`predict_frame` and streaming :func:`predict_files`;
* :mod:`~mtl_torchrec.serve.export`: TorchScript artifacts (fp32 or INT8 tables) with their
  preprocessing as JSON, and :func:`load_artifact`, which applies it.
"""

from mtl_torchrec.serve.predict import predict_files, predict_frame
from mtl_torchrec.serve.runs import LoadedRun, load_run
from mtl_torchrec.serve.scoring import ScoringModel, scoring_inputs

__all__ = ["LoadedRun", "ScoringModel", "load_run", "predict_files", "predict_frame", "scoring_inputs"]
