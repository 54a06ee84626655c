"""An on-disk store of item text vectors that doubles as the encoding cache.

A store is a folder with ``vectors.safetensors`` (``ids``, ``vectors``, ``has_text`` and a
16-byte BLAKE2b hash of each item's text) and a small ``index.json`` (model, revision, pooling,
normalisation, max_length, dimension, counts and the SHA-256 of the vectors file). Both files are
written atomically, vectors first; an index that does not match its vectors file means "no cache".

:func:`build_store` re-encodes only what changed: the whole store when the model (its content
hash or hub commit) or a vector setting differs, otherwise just the items whose text hash differs.
Unchanged inputs do no model work and leave the files untouched (byte for byte). Under
``torchrun`` every rank encodes one slice of the work and the slices are gathered.

Example::

    store, stats = build_store(["Toy Story (1995)", None, "GoldenEye"], "stores/movies", TextEncoderConfig())
    stats.encoded, stats.reused          # (2, 0) the first time, (0, 2) after
    weights, has_text = store.table(num_items=3)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.core.io import PathLike, atomic_write_bytes, write_json
from mtl_torchrec.text.config import TextEncoderConfig
from mtl_torchrec.text.encoder import (
    TextEncoder,
    encoder_settings,
    model_fingerprint,
    resolve_model,
    settings_key,
)

VECTORS_FILE = "vectors.safetensors"
INDEX_FILE = "index.json"
FORMAT_VERSION = 1

TextInput = Union[Sequence[Optional[Union[str, bytes]]], Mapping[int, Optional[Union[str, bytes]]]]


def text_hash(text: Optional[str]) -> bytes:
    """16-byte digest of an item's text (``None``: no text)."""
    data = b"\x00none" if text is None else b"\x01" + text.encode("utf-8")
    return hashlib.blake2b(data, digest_size=16).digest()


def clean_texts(texts: TextInput, source: str = "item text") -> Tuple[np.ndarray, List[Optional[str]]]:
    """``(ids, texts)`` sorted by id; empty or blank texts become ``None`` (the item has no text).

    Raises :class:`DataError` naming the item for text that is not valid UTF-8 or not a string.
    """
    items = sorted(texts.items()) if isinstance(texts, Mapping) else list(enumerate(texts))
    ids = np.array([int(i) for i, _ in items], dtype=np.int64)
    if len(ids) and (ids[0] < 0 or np.any(np.diff(ids) <= 0)):
        raise DataError(f"{source}: item ids must be non-negative and unique")
    out: List[Optional[str]] = []
    for item, t in items:
        if isinstance(t, bytes):
            try:
                t = t.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{source}: item {item}: text is not valid UTF-8 ({e.reason} at byte {e.start})") from None
        elif t is not None and not isinstance(t, str):
            raise DataError(f"{source}: item {item}: text must be a string, got {type(t).__name__}")
        if isinstance(t, str):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                # Lone surrogates: bytes that were decoded with errors="surrogateescape".
                raise DataError(f"{source}: item {item}: text is not valid UTF-8 ({e.reason} at {e.start})") from None
            if not t.strip():
                t = None
        out.append(t)
    return ids, out


@dataclass
class StoreStats:
    """What one :func:`build_store` call did: items, those with and without text, vectors encoded or
    reused from the cache, texts truncated at ``max_length``, and whether the store was written.
    """

    items: int = 0
    with_text: int = 0
    # Items without text (None, empty or blank): served the learned "no text" vector.
    empty: int = 0
    encoded: int = 0
    reused: int = 0
    truncated: int = 0
    written: bool = False


@dataclass
class TextStore:
    """Vectors per item id. ``vectors`` rows of items without text are zero and ``has_text`` False."""

    ids: np.ndarray
    vectors: torch.Tensor
    has_text: np.ndarray
    hashes: np.ndarray
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Width of the vectors."""
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def to_bytes(self) -> bytes:
        """The safetensors content of ``vectors.safetensors`` (ids, vectors, has_text, text_hash)."""
        from safetensors.torch import save

        return save(
            {
                "ids": torch.from_numpy(self.ids.astype(np.int64)),
                "vectors": self.vectors.float().contiguous(),
                "has_text": torch.from_numpy(self.has_text.astype(np.uint8)),
                "text_hash": torch.from_numpy(self.hashes.astype(np.uint8)),
            }
        )

    def save(self, path: PathLike) -> None:
        """Writes ``vectors.safetensors`` into the folder ``path``, then ``index.json`` with that file's
        SHA-256; each atomically."""
        folder = Path(path)
        data = self.to_bytes()
        atomic_write_bytes(folder / VECTORS_FILE, data)
        index = {
            "format": FORMAT_VERSION,
            **self.info,
            "dim": self.dim,
            "num_items": len(self),
            "with_text": int(self.has_text.sum()),
            "vectors_file": VECTORS_FILE,
            "vectors_sha256": hashlib.sha256(data).hexdigest(),
        }
        write_json(folder / INDEX_FILE, index)

    @staticmethod
    def load(path: PathLike) -> "TextStore":
        """Reads a store; :class:`FileNotFoundError` or :class:`DataError` naming the file if unusable."""
        from safetensors.torch import load

        folder = Path(path)
        index_path = folder / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(f"text store: {index_path} not found (encode one with `mtl-torchrec encode-text`)")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{index_path}: not a valid text-store index: {e}") from None
        if index.get("format") != FORMAT_VERSION:
            raise DataError(f"{index_path}: unsupported text-store format {index.get('format')!r}")
        vec_path = folder / str(index.get("vectors_file", VECTORS_FILE))
        if not vec_path.is_file():
            raise FileNotFoundError(f"text store: {vec_path} not found (named by {index_path})")
        data = vec_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != index.get("vectors_sha256"):
            raise DataError(f"{vec_path}: content does not match {index_path} (interrupted write or edited file)")
        t = load(data)
        info = {k: v for k, v in index.items() if k in ("model", "revision", "pooling", "normalize", "max_length")}
        return TextStore(
            ids=t["ids"].numpy().astype(np.int64),
            vectors=t["vectors"],
            has_text=t["has_text"].numpy().astype(bool),
            hashes=t["text_hash"].numpy(),
            info=info,
        )

    def table(self, num_items: int, source: str = "text store") -> Tuple[torch.Tensor, torch.Tensor]:
        """``(weights [num_items, dim], has_text [num_items])`` indexed by item id.

        Every id in ``[0, num_items)`` must have an entry (with or without text); otherwise a
        :class:`DataError` gives the count and a few of the missing ids.
        """
        present = np.zeros(num_items, dtype=bool)
        inside = self.ids[self.ids < num_items]
        present[inside] = True
        missing = np.flatnonzero(~present)
        if len(missing):
            examples = ", ".join(str(int(i)) for i in missing[:5])
            raise DataError(
                f"{source}: {len(missing)} of {num_items} item ids have no vector (e.g. {examples}); "
                "re-encode the store for this data"
            )
        rows = self.ids < num_items
        weights = torch.zeros(num_items, self.dim, dtype=torch.float32)
        has_text = torch.zeros(num_items, dtype=torch.bool)
        weights[torch.from_numpy(self.ids[rows])] = self.vectors[torch.from_numpy(rows)]
        has_text[torch.from_numpy(self.ids[rows])] = torch.from_numpy(self.has_text[rows])
        return weights, has_text


def _load_cache(path: Path, key: str) -> Optional[TextStore]:
    if not (path / INDEX_FILE).is_file():
        return None
    try:
        cached = TextStore.load(path)
    except (FileNotFoundError, DataError):
        return None
    same = settings_key(str(cached.info.get("revision")), _settings_cfg(cached.info)) == key
    return cached if same else None


def _settings_cfg(info: Dict[str, Any]) -> TextEncoderConfig:
    return TextEncoderConfig(
        pooling=info.get("pooling", "mean"), normalize=bool(info.get("normalize", True)),
        max_length=int(info.get("max_length", 0)),
    )


def build_store(
    texts: TextInput,
    path: PathLike,
    cfg: TextEncoderConfig,
    progress: bool = False,
    source: str = "item text",
) -> Tuple[TextStore, StoreStats]:
    """Encodes ``texts`` (a list indexed by item id, or ``{id: text}``) into the store at ``path``.

    Collective under an initialised process group: every rank must call it with the same texts;
    each encodes a slice of the items that need it, rank 0 writes, all return the same store.
    """
    folder = Path(path)
    ids, clean = clean_texts(texts, source)
    model, revision = model_fingerprint(cfg.model, cfg.trust_remote_code)
    key = settings_key(revision, cfg)
    cached = _load_cache(folder, key)
    hashes = np.frombuffer(b"".join(text_hash(t) for t in clean), dtype=np.uint8).reshape(len(clean), 16)
    has_text = np.array([t is not None for t in clean], dtype=bool)

    stats = StoreStats(items=len(ids), with_text=int(has_text.sum()), empty=int((~has_text).sum()))
    reuse_row = np.full(len(ids), -1, dtype=np.int64)
    if cached is not None:
        row_of = {int(i): r for r, i in enumerate(cached.ids)}
        for j, (i, h) in enumerate(zip(ids, hashes)):
            r = row_of.get(int(i), -1)
            if r >= 0 and bytes(cached.hashes[r]) == bytes(h):
                reuse_row[j] = r
    todo = np.flatnonzero(has_text & (reuse_row < 0))

    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    mine = np.array_split(todo, world)[rank]
    vecs = torch.zeros(0, 0)
    truncated = 0
    if len(mine):
        encoder = TextEncoder(cfg)
        vecs, enc_stats = encoder.encode([clean[j] for j in mine], progress=progress and rank == 0, desc="encode text")
        truncated = enc_stats.truncated
    parts: List[Any] = [(mine, vecs.numpy(), truncated)]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (mine, vecs.numpy(), truncated))

    unchanged = cached is not None and len(todo) == 0 and np.array_equal(cached.ids, ids) and np.array_equal(
        cached.hashes, hashes
    )
    if unchanged:
        stats.reused = stats.with_text
        return cached, stats

    dim = next((p[1].shape[1] for p in parts if len(p[0])), cached.dim if cached is not None else 0)
    if dim == 0:
        # Nothing to encode and nothing cached (no item has text): the width still comes from the model.
        from transformers import AutoConfig

        dim = int(AutoConfig.from_pretrained(
            resolve_model(cfg.model), trust_remote_code=cfg.trust_remote_code
        ).hidden_size)
    vectors = torch.zeros(len(ids), dim, dtype=torch.float32)
    if cached is not None and (reuse_row >= 0).any():
        sel = np.flatnonzero(reuse_row >= 0)
        vectors[torch.from_numpy(sel)] = cached.vectors[torch.from_numpy(reuse_row[sel])]
    for rows, v, n_trunc in parts:
        if len(rows):
            vectors[torch.from_numpy(np.asarray(rows))] = torch.from_numpy(v)
        stats.truncated += n_trunc
    stats.encoded = len(todo)
    stats.reused = stats.with_text - stats.encoded
    store = TextStore(
        ids=ids,
        vectors=vectors,
        has_text=has_text,
        hashes=hashes,
        info={"model": model, "revision": revision, **encoder_settings(cfg)},
    )
    if rank == 0:
        store.save(folder)
    stats.written = True
    if world > 1:
        dist.barrier()
    return store, stats

