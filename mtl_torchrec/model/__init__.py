"""The multi-task model, its backbones, tasks and losses, loss balancers, text features and diagnostics,
built from ``model.*`` settings and a data schema; :mod:`~mtl_torchrec.model.head` is the public
multi-task head (backbone + towers, losses, label init) for users' own TorchRec models.
"""
