"""The multi-task model, its backbones, tasks and losses, loss balancers, text features and diagnostics,
built from ``model.*`` settings and a data schema.
"""
