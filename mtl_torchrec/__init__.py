"""mtl_torchrec: multi-task recommendation on TorchRec (MMoE, PLE, ESMM, loss balancing, text features,
DCP checkpoints).

Packages, lowest layer first: ``core`` (errors, config loading, registries, file I/O), ``data``,
``text``, ``modules`` (plain-tensor building blocks), ``model``, ``config`` (the run config),
``distributed``, ``train`` / ``eval``, ``serve`` (predict and export), ``launch`` (the ``mtl-torchrec`` command) and
``components`` (torchx jobs).
"""
