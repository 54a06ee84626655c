"""Train, evaluate, predict and export from Python (a notebook, a script): the workflows that the
``mtl-torchrec`` command runs, as documented functions (docs/python_api.md).

* :func:`train` (:mod:`~mtl_torchrec.workflows.training`): a config (object, YAML file or packaged
  name, plus dotted overrides) to a finished :class:`Run`;
* :func:`evaluate` (:mod:`~mtl_torchrec.workflows.evaluation`): metrics, report and plots of a run;
* :func:`predict` (:mod:`~mtl_torchrec.workflows.prediction`): per-row scores of a DataFrame or files;
* :func:`export` (:mod:`~mtl_torchrec.workflows.exporting`): an inference artifact.

Each works in one process without torchrun (a one-process group of its own) and, started by
``torchrun``, on every rank as the command does; ``ctx=`` runs it in a group the caller holds.

Example::

    run = train("default", overrides=["train.epochs=1"])
    evaluate(run).summary["tasks"]["click"]["auc"]
"""

from mtl_torchrec.workflows.common import process_group, resolve_config
from mtl_torchrec.workflows.evaluation import evaluate
from mtl_torchrec.workflows.exporting import export
from mtl_torchrec.workflows.prediction import PredictionFile, predict
from mtl_torchrec.workflows.run import Run
from mtl_torchrec.workflows.training import train

__all__ = ["PredictionFile", "Run", "evaluate", "export", "predict", "process_group", "resolve_config", "train"]
