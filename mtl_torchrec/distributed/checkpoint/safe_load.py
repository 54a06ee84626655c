"""Reading a checkpoint's files without running code from them.

DCP's own ``.metadata`` file is a pickle; :func:`read_dcp_metadata` unpickles it with an unpickler
that accepts only the exact DCP metadata classes a checkpoint holds, and
:class:`SafeFileSystemReader` is the DCP reader that uses it. The bookkeeping files (meta.json, RNG
states, the manifest) are JSON only (:func:`read_json_file`).

Example::

    metadata = read_dcp_metadata(ckpt / ".metadata")    # CheckpointError for anything refused
    dcp.load(state, checkpoint_id=str(ckpt), storage_reader=SafeFileSystemReader(str(ckpt)))
"""

from __future__ import annotations

import importlib
import json
import pickle
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Tuple, Union

from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from mtl_torchrec.core.errors import CheckpointError


def _dcp_metadata_class(cls: type) -> Tuple[str, str]:
    return cls.__module__, cls.__qualname__


# Every global that DCP's .metadata of this project's checkpoints asks for, recorded by saving
# checkpoints under every sharding type, optimizer, balancer and text features, on 1 and 2 ranks
# (torch 2.13), plus the dtypes a state tensor can have. Exact (module, name) pairs: pickle resolves
# dotted names through attributes, so a module prefix would admit e.g. ``os.system`` reached
# through ``torch.distributed.checkpoint.metadata.os``, or any function of a DCP module.
_ALLOWED_GLOBALS: FrozenSet[Tuple[str, str]] = frozenset(
    {
        *(
            _dcp_metadata_class(c)
            for c in (
                Metadata, MetadataIndex, StorageMeta, TensorStorageMetadata, TensorProperties,
                ChunkStorageMetadata, _StorageInfo,
                # A pickled-object entry: allowed here so that the refusal below names the entry.
                BytesStorageMetadata,
            )
        ),
        ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),  # TensorProperties' state
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # maps a layout name such as "torch.strided" back
        # The checkpoint id DCP records; Python 3.13 pickles paths as pathlib._local (python/cpython#133789).
        ("pathlib", "PosixPath"),
        ("pathlib._local", "PosixPath"),
        *(
            ("torch", dtype)
            for dtype in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                          "uint8", "bool")
        ),
    }
)


def one_line(text: str, limit: int = 200) -> str:
    """``text`` escaped onto one line and cut at ``limit`` characters (a crafted pickle's names and
    error texts, or a garbled pointer file's content, end up in messages)."""
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def _allowed_objects() -> List[Any]:
    """The allowed globals that have attributes (classes, functions): pickle's BUILD opcode can
    set attributes on any object it holds, an allowed class itself included."""
    out = []
    for module, name in sorted(_ALLOWED_GLOBALS):
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # pathlib._local before Python 3.13
            continue
        if hasattr(obj, "__dict__"):
            out.append(obj)
    return out


def _attributes(objects: List[Any]) -> Dict[int, Dict[str, Any]]:
    return {id(o): dict(vars(o)) for o in objects}


def _restore_attributes(objects: List[Any], before: Dict[int, Dict[str, Any]]) -> List[str]:
    """Puts back every attribute of ``objects`` that was rebound, added or deleted since
    ``before``; returns their names."""
    changed: List[str] = []
    for obj in objects:
        was, now = before[id(obj)], dict(vars(obj))
        for key in sorted(set(was) | set(now)):
            if key in was and key in now and now[key] is was[key]:
                continue
            changed.append(one_line(f"{getattr(obj, '__qualname__', type(obj).__name__)}.{key}"))
            if key in was:
                setattr(obj, key, was[key])
            else:
                delattr(obj, key)
    return changed


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` of ``source``: any global but the exact pairs of
    :data:`_ALLOWED_GLOBALS`, and any dotted name, is a :class:`CheckpointError` naming the file
    and the global, raised before anything is called."""

    def __init__(self, file: Any, source: Union[str, Path]) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if "." in name or (module, name) not in _ALLOWED_GLOBALS:
            raise CheckpointError(
                f"{self.source}: refused global {one_line(f'{module}.{name}')}: DCP metadata holds only "
                "DCP's metadata classes, so this file was not written by a checkpoint save"
            )
        return super().find_class(module, name)


def read_dcp_metadata(path: Union[str, Path]) -> Metadata:
    """DCP's ``Metadata`` from the file ``path`` through :class:`_MetadataUnpickler`.

    A refused global, a file that is not DCP metadata, a pickle that sets attributes of an
    allowed class (put back at once) or a pickled-object entry is a :class:`CheckpointError`
    naming ``path``.
    """
    objects = _allowed_objects()
    before = _attributes(objects)
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f, path).load()
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - a crafted pickle can raise anything; none of it is ours
        raise CheckpointError(f"{path}: not DCP metadata ({type(e).__name__}: {one_line(str(e))})") from None
    finally:
        changed = _restore_attributes(objects, before)
    if changed:
        raise CheckpointError(f"{path}: refused: the pickle sets {', '.join(changed)} (put back)")
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path}: not DCP metadata (a {type(metadata).__name__})")
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, BytesStorageMetadata):
            raise CheckpointError(f"{path}: entry '{one_line(str(fqn))}' is a pickled object; only tensors are loaded")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """DCP reader that unpickles nothing but DCP's own metadata classes (:func:`read_dcp_metadata`)
    and refuses byte items (which DCP would restore with ``torch.load(weights_only=False)``);
    tensors are read by DCP with ``weights_only=True``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """DCP's metadata, read through :func:`read_dcp_metadata` (CheckpointError for anything refused)."""
        metadata = read_dcp_metadata(self._get_metadata_path(kwargs.get("rank")))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def read_json_file(path: Union[str, Path], what: str = "file") -> Any:
    """Parses a bookkeeping JSON file (meta.json, rng, manifest) as JSON only; an unreadable or
    garbled one is a :class:`CheckpointError` naming it and saying where it breaks."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing {what}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not a valid {what} (not UTF-8 text at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not a valid {what} (JSON error at line {e.lineno} column {e.colno}: {e.msg})") from None
