"""A state dict as DCP sees it: tensors apart from JSON values, and what the model must match.

Only tensors go through DCP; every other value of a model or optimizer state dict (optimizer
hyper-parameters, step counts) is kept as JSON in ``meta.json`` (:func:`split_state`,
:func:`merge_state`). :func:`describe_module` records the tables, tasks and global tensor shapes a
checkpoint must agree on with the model it is loaded into, :func:`check_compatible` lists every
difference.

Example::

    tensors, rest = split_state({"model": dmp.state_dict()})
    check_compatible(saved_meta["model"], describe_module(dmp), ckpt)
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import torch
from torch import nn

from mtl_torchrec.core.errors import CheckpointError


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def split_state(tree: Any) -> Tuple[Any, Any]:
    """Splits a nested dict into (tensors only, JSON-able rest); lists/tuples are JSON leaves."""
    if isinstance(tree, dict):
        tensors, rest = {}, {}
        for k, v in tree.items():
            t, r = split_state(v)
            if t is not None:
                tensors[str(k)] = t
            if r is not None:
                rest[str(k)] = r
        return (tensors or None), (rest or None)
    if _is_tensor(tree):
        return tree, None
    try:
        json.dumps(tree)
    except TypeError:
        raise CheckpointError(f"cannot checkpoint a value of type {type(tree).__name__}: only tensors and JSON") from None
    return None, tree


def merge_state(tensors: Any, rest: Any) -> Any:
    """The inverse of :func:`split_state`: the tensor tree with the JSON rest put back in."""
    if rest is None:
        return tensors
    if tensors is None:
        return rest
    out = dict(tensors)
    for k, v in rest.items():
        out[k] = merge_state(out.get(k), v)
    return out


def global_shapes(state: Dict[str, Any]) -> Dict[str, List[int]]:
    """Global (unsharded) shape of every tensor in a module state dict."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ShardedTensor's deprecation notice
        return {k: list(v.size()) for k, v in state.items() if _is_tensor(v)}


def describe_module(module: nn.Module) -> Dict[str, Any]:
    """What a checkpoint must agree on with the model it is loaded into: embedding tables, tasks,
    and the global shape of every state tensor."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    tables: Dict[str, Any] = {}
    for m in module.modules():
        configs = None
        if isinstance(m, EmbeddingBagCollection):
            configs = m.embedding_bag_configs()
        elif isinstance(m, EmbeddingCollection):
            configs = m.embedding_configs()
        elif hasattr(m, "_embedding_bag_configs"):  # the sharded EBC keeps its configs here
            configs = m._embedding_bag_configs
        elif hasattr(m, "_embedding_configs"):  # and the sharded EC (sequence tables) here
            configs = m._embedding_configs
        for c in configs or []:
            tables[c.name] = {
                "num_embeddings": int(c.num_embeddings),
                "embedding_dim": int(c.embedding_dim),
                "feature_names": list(c.feature_names),
            }
    tasks = []
    for m in module.modules():
        if hasattr(m, "tasks") and isinstance(m.tasks, list):
            tasks = [{"name": t.name, "type": t.type} for t in m.tasks if hasattr(t, "name")]
            break
    return {"tables": tables, "tasks": tasks, "shapes": global_shapes(module.state_dict())}


def check_compatible(saved: Dict[str, Any], current: Dict[str, Any], where: Union[str, Path]) -> None:
    """Raises :class:`CheckpointError` listing every difference between two :func:`describe_module`s."""
    diffs: List[str] = []
    st, ct = saved.get("tables", {}), current.get("tables", {})
    for name in sorted(set(st) - set(ct)):
        diffs.append(f"table '{name}' is in the checkpoint but not in the model")
    for name in sorted(set(ct) - set(st)):
        diffs.append(f"table '{name}' is in the model but not in the checkpoint")
    for name in sorted(set(st) & set(ct)):
        for key in ("num_embeddings", "embedding_dim", "feature_names"):
            if st[name].get(key) != ct[name].get(key):
                diffs.append(f"table '{name}': {key} {st[name].get(key)} in the checkpoint, {ct[name].get(key)} in the model")
    if saved.get("tasks") != current.get("tasks"):
        diffs.append(f"tasks {saved.get('tasks')} in the checkpoint, {current.get('tasks')} in the model")
    ss, cs = saved.get("shapes", {}), current.get("shapes", {})
    for k in sorted(set(ss) - set(cs)):
        diffs.append(f"state '{k}' is in the checkpoint but not in the model")
    for k in sorted(set(cs) - set(ss)):
        diffs.append(f"state '{k}' is in the model but not in the checkpoint")
    for k in sorted(set(ss) & set(cs)):
        if ss[k] != cs[k]:
            diffs.append(f"state '{k}': shape {ss[k]} in the checkpoint, {cs[k]} in the model")
    if diffs:
        shown = diffs[:20] + ([f"... and {len(diffs) - 20} more"] if len(diffs) > 20 else [])
        raise CheckpointError(f"{where}: checkpoint does not match the model:\n  " + "\n  ".join(shown))
