"""Text vectors on disk: a content-addressed encoding cache and stores keyed by raw item key.

A store is a folder with ``vectors.safetensors`` (``vectors``, ``has_text``, a 16-byte BLAKE2b
``text_hash`` per entry and, for keyed stores, each entry's raw key) and a small ``index.json``
(model, revision, pooling, normalisation, max_length, dimension, counts, what the store is keyed
by, and the SHA-256 of the vectors file). Both files are written atomically, vectors first; an
index that does not match its vectors file means "no cache" (and :meth:`TextStore.load` says so).

Two uses:

* :func:`encode_texts`: the **cache**, one folder per encoder identity (model content hash or hub
  commit + vector settings) under a cache root, keyed by the text itself (its hash). Any data,
  spec or feature whose texts were encoded before finds them there, so switching specs re-encodes
  nothing already seen; a different model or setting is another folder.
* :func:`build_store`: a store **keyed by raw item key** (``mtl-torchrec encode-text --id-column``),
  which records the key column it was built from; :meth:`TextStore.lookup` refuses keys it lacks,
  naming a few, so a store can never silently serve another item's text.

Under ``torchrun`` every rank encodes one slice of the missing texts and the slices are gathered.

Example::

    vectors, has_text, stats = encode_texts(["Toy Story (1995)", None, "GoldenEye"], "runs/text_cache",
                                            TextEncoderConfig())
    stats.encoded, stats.reused          # (2, 0) the first time, (0, 2) after
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.core.io import PathLike, atomic_write_bytes, write_json
from mtl_torchrec.data.texts import text_hash
from mtl_torchrec.text.config import TextEncoderConfig
from mtl_torchrec.text.encoder import TextEncoder, encoder_settings, model_fingerprint, resolve_model, settings_key

VECTORS_FILE = "vectors.safetensors"
INDEX_FILE = "index.json"
FORMAT_VERSION = 2
# ``keyed_by`` of the content-addressed cache (entries found by their text's hash).
BY_TEXT = "text"


def clean_text(text: Any, source: str) -> Optional[str]:
    """``text`` as a str, or None when it is None, empty or blank (no text).

    Raises :class:`DataError` naming ``source`` for bytes or strings that are not valid UTF-8, or a
    value that is not text.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{source}: text is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    elif text is not None and not isinstance(text, str):
        raise DataError(f"{source}: text must be a string, got {type(text).__name__}")
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        # Lone surrogates: bytes that were decoded with errors="surrogateescape".
        raise DataError(f"{source}: text is not valid UTF-8 ({e.reason} at {e.start})") from None
    return text if text.strip() else None


@dataclass
class StoreStats:
    """What one encoding call did: entries, those with and without text, distinct texts encoded or
    reused from the cache, texts truncated at ``max_length``, and whether a file was written."""

    items: int = 0
    with_text: int = 0
    # Entries without text (None, empty or blank): served the learned "no text" vector.
    empty: int = 0
    encoded: int = 0
    reused: int = 0
    truncated: int = 0
    written: bool = False


@dataclass
class TextStore:
    """Vectors with their texts' hashes and, for a keyed store, each entry's raw key.

    ``vectors`` rows of entries without text are zero and ``has_text`` False. ``info`` holds the
    encoder identity (model, revision, settings) and ``keyed_by`` (:data:`BY_TEXT` for the cache,
    else e.g. ``"column item_id of items.csv"``).
    """

    vectors: torch.Tensor
    has_text: np.ndarray
    hashes: np.ndarray
    keys: Optional[List[str]] = None
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Width of the vectors."""
        return int(self.vectors.shape[1])

    @property
    def key_column(self) -> Optional[str]:
        """The raw key column a keyed store was built from (None for the cache)."""
        column = self.info.get("key_column")
        return str(column) if column is not None else None

    @property
    def keyed_by(self) -> str:
        """What the entries are found by: :data:`BY_TEXT`, or the raw key column it was built from."""
        return str(self.info.get("keyed_by", BY_TEXT))

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def to_bytes(self) -> bytes:
        """The safetensors content of ``vectors.safetensors``."""
        from safetensors.torch import save

        tensors = {
            "vectors": self.vectors.float().contiguous(),
            "has_text": torch.from_numpy(self.has_text.astype(np.uint8)),
            "text_hash": torch.from_numpy(np.array(self.hashes, dtype=np.uint8).reshape(-1, 16)),
        }
        if self.keys is not None:
            encoded = [k.encode("utf-8") for k in self.keys]
            offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
            np.cumsum([len(b) for b in encoded], out=offsets[1:])
            tensors["key_bytes"] = torch.frombuffer(bytearray(b"".join(encoded)) or bytearray(1), dtype=torch.uint8)
            tensors["key_offsets"] = torch.from_numpy(offsets)
        return save(tensors)

    def save(self, path: PathLike) -> None:
        """Writes ``vectors.safetensors`` into the folder ``path``, then ``index.json`` with that file's
        SHA-256; each atomically."""
        folder = Path(path)
        data = self.to_bytes()
        atomic_write_bytes(folder / VECTORS_FILE, data)
        index = {
            "format": FORMAT_VERSION,
            **self.info,
            "keyed_by": self.keyed_by,
            "dim": self.dim,
            "entries": len(self),
            "with_text": int(self.has_text.sum()),
            "vectors_file": VECTORS_FILE,
            "vectors_sha256": hashlib.sha256(data).hexdigest(),
        }
        write_json(folder / INDEX_FILE, index)

    @staticmethod
    def load(path: PathLike) -> "TextStore":
        """Reads a store; :class:`FileNotFoundError` or :class:`DataError` naming the file if unusable
        (a store of the first format, keyed by id-vocabulary index, is refused: re-encode it)."""
        from safetensors.torch import load

        folder = Path(path)
        index_path = folder / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(f"text store: {index_path} not found (encode one with `mtl-torchrec encode-text`)")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{index_path}: not a valid text-store index: {e}") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT_VERSION:
            found = index.get("format") if isinstance(index, dict) else None
            raise DataError(f"{index_path}: unsupported text-store format {found!r} (this version reads "
                            f"{FORMAT_VERSION}; re-encode with `mtl-torchrec encode-text`)")
        vec_path = folder / str(index.get("vectors_file", VECTORS_FILE))
        if not vec_path.is_file():
            raise FileNotFoundError(f"text store: {vec_path} not found (named by {index_path})")
        data = vec_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != index.get("vectors_sha256"):
            raise DataError(f"{vec_path}: content does not match {index_path} (interrupted write or edited file)")
        t = load(data)
        keys = None
        if "key_offsets" in t:
            raw = t["key_bytes"].numpy().tobytes()
            off = t["key_offsets"].numpy()
            keys = [raw[off[i]:off[i + 1]].decode("utf-8") for i in range(len(off) - 1)]
        info = {k: v for k, v in index.items()
                if k in ("model", "revision", "pooling", "normalize", "max_length", "keyed_by", "key_column")}
        return TextStore(
            vectors=t["vectors"],
            has_text=t["has_text"].numpy().astype(bool),
            hashes=t["text_hash"].numpy(),
            keys=keys,
            info=info,
        )

    def lookup(self, keys: Sequence[Optional[str]], source: str = "text store") -> Tuple[torch.Tensor, torch.Tensor]:
        """``(vectors [n, dim], has_text [n])`` of raw ``keys`` in a keyed store (None: no text).

        Raises :class:`DataError` naming ``source``, what the store is keyed by, the count and a few
        keys it lacks, or that it is a cache keyed by text (not by item).
        """
        if self.keys is None:
            raise DataError(f"{source}: keyed by text (an encoding cache), not by item key; build a keyed store "
                            f"with `mtl-torchrec encode-text --input ITEMS --id-column KEY`")
        row_of = {k: i for i, k in enumerate(self.keys)}
        rows = np.array([row_of.get(k, -1) if k is not None else -2 for k in keys], dtype=np.int64)
        missing = [k for k, r in zip(keys, rows) if r == -1]
        if missing:
            examples = ", ".join(repr(k) for k in missing[:5])
            raise DataError(
                f"{source}: {len(missing)} of {sum(k is not None for k in keys)} item keys of the data are not in "
                f"the store (keyed by {self.keyed_by}; e.g. {examples}); is it keyed by the same ids as the data?"
            )
        vectors = torch.zeros(len(keys), self.dim, dtype=torch.float32)
        has_text = torch.zeros(len(keys), dtype=torch.bool)
        found = np.flatnonzero(rows >= 0)
        if len(found):
            vectors[torch.from_numpy(found)] = self.vectors[torch.from_numpy(rows[found])]
            has_text[torch.from_numpy(found)] = torch.from_numpy(self.has_text[rows[found]])
        return vectors, has_text


def cache_folder(root: PathLike, cfg: TextEncoderConfig) -> Path:
    """The cache folder of one encoder identity under ``root``: ``<model name>-<hash of revision and
    settings>``, so different models or vector settings never share vectors."""
    model, revision = model_fingerprint(cfg.model, cfg.trust_remote_code)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model.split(" ")[0]).name or "model")[:40]
    digest = hashlib.sha256(settings_key(revision, cfg).encode("utf-8")).hexdigest()[:16]
    return Path(root) / f"{slug}-{digest}"


def _same_encoder(store: TextStore, cfg: TextEncoderConfig, revision: str) -> bool:
    settings = TextEncoderConfig(
        pooling=store.info.get("pooling", "mean"), normalize=bool(store.info.get("normalize", True)),
        max_length=int(store.info.get("max_length", 1)),
    )
    return settings_key(str(store.info.get("revision")), settings) == settings_key(revision, cfg)


def _check_writable(folder: Path, what: str) -> None:
    """Creates ``folder`` (and parents) and checks it can be written, before any encoding work;
    ConfigError naming ``what`` otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what}: cannot create {folder}: {e.strerror or e}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: {folder} is not writable")


def _load_if_usable(folder: Path, cfg: TextEncoderConfig, revision: str) -> Optional[TextStore]:
    """A store at ``folder`` made by the same encoder, else None (missing, damaged or other settings)."""
    if not (folder / INDEX_FILE).is_file():
        return None
    try:
        store = TextStore.load(folder)
    except (FileNotFoundError, DataError):
        return None
    return store if _same_encoder(store, cfg, revision) else None


def _encode_collective(todo: List[str], cfg: TextEncoderConfig, progress: bool) -> Tuple[torch.Tensor, int]:
    """``(vectors [len(todo), dim], truncated)``; under a process group each rank encodes a slice and
    every rank returns all of them (collective)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    mine = np.array_split(np.arange(len(todo)), world)[rank]
    vecs = np.zeros((0, 0), dtype=np.float32)
    truncated = 0
    if len(mine):
        encoder = TextEncoder(cfg)
        v, enc_stats = encoder.encode([todo[j] for j in mine], progress=progress and rank == 0, desc="encode text")
        vecs, truncated = v.numpy(), enc_stats.truncated
    parts: List[Any] = [(mine, vecs, truncated)]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (mine, vecs, truncated))
    dim = next((p[1].shape[1] for p in parts if len(p[0])), 0)
    out = torch.zeros(len(todo), dim, dtype=torch.float32)
    for rows, v, _ in parts:
        if len(rows):
            out[torch.from_numpy(np.asarray(rows))] = torch.from_numpy(v)
    return out, sum(p[2] for p in parts)


def model_dim(cfg: TextEncoderConfig) -> int:
    """The encoder's output width, from its config (no weights loaded)."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(resolve_model(cfg.model), trust_remote_code=cfg.trust_remote_code).hidden_size)


def _vectors_for(
    texts: List[Optional[str]], previous: Optional[TextStore], cfg: TextEncoderConfig, progress: bool
) -> Tuple[torch.Tensor, np.ndarray, np.ndarray, StoreStats, Dict[bytes, int], torch.Tensor]:
    """Vectors of ``texts`` (reusing ``previous`` entries with the same text hash), their has-text
    flags and hashes, counts, and the newly encoded texts by hash (row in the last tensor)."""
    hashes = np.frombuffer(b"".join(text_hash(t) for t in texts), dtype=np.uint8).reshape(len(texts), 16)
    has_text = np.array([t is not None for t in texts], dtype=bool)
    stats = StoreStats(items=len(texts), with_text=int(has_text.sum()), empty=int((~has_text).sum()))
    known: Dict[bytes, int] = {}
    if previous is not None:
        known = {bytes(h): i for i, h in enumerate(previous.hashes) if previous.has_text[i]}
    new: Dict[bytes, int] = {}
    todo: List[str] = []
    for t, h in zip(texts, hashes):
        hb = bytes(h)
        if t is not None and hb not in known and hb not in new:
            new[hb] = len(todo)
            todo.append(t)
    encoded, stats.truncated = _encode_collective(todo, cfg, progress)
    dim = encoded.shape[1] if len(todo) else (previous.dim if previous is not None else model_dim(cfg))
    vectors = torch.zeros(len(texts), dim, dtype=torch.float32)
    for i, (t, h) in enumerate(zip(texts, hashes)):
        if t is None:
            continue
        hb = bytes(h)
        vectors[i] = encoded[new[hb]] if hb in new else previous.vectors[known[hb]]  # type: ignore[union-attr]
    stats.encoded = len(todo)
    # Distinct texts: a text repeated on many entries is encoded (or reused) once.
    stats.reused = len({bytes(h) for t, h in zip(texts, hashes) if t is not None}) - len(todo)
    return vectors, has_text, hashes, stats, new, encoded


def encode_texts(
    texts: Sequence[Any], cache_root: PathLike, cfg: TextEncoderConfig, progress: bool = False,
    source: str = "text",
) -> Tuple[torch.Tensor, torch.Tensor, StoreStats]:
    """``(vectors [n, dim], has_text [n], stats)`` of ``texts`` (None/blank: no text, a zero vector),
    through the content-addressed cache under ``cache_root`` (see :func:`cache_folder`).

    Only texts the cache lacks are encoded; they are added to it (atomically, by rank 0), so any
    later call, whatever data or spec the texts come from, reuses them. Collective under a process
    group: every rank passes the same texts. Raises DataError naming ``source`` and the entry for
    text that is not valid UTF-8, ConfigError for an unusable model or a cache folder that cannot be
    created or written (checked before any encoding).
    """
    clean = [clean_text(t, f"{source} {i}") for i, t in enumerate(texts)]
    model, revision = model_fingerprint(cfg.model, cfg.trust_remote_code)
    folder = cache_folder(cache_root, cfg)
    _check_writable(folder, "model.text.cache_dir (the encoding cache)")
    cached = _load_if_usable(folder, cfg, revision)
    vectors, has_text, _, stats, new, encoded = _vectors_for(clean, cached, cfg, progress)
    if new:
        old_n = len(cached) if cached is not None else 0
        merged = TextStore(
            vectors=torch.cat([cached.vectors, encoded]) if cached is not None else encoded,
            has_text=np.concatenate([cached.has_text if cached is not None else np.zeros(0, dtype=bool),
                                     np.ones(len(new), dtype=bool)]),
            hashes=np.concatenate([cached.hashes.reshape(-1, 16) if cached is not None else np.zeros((0, 16), np.uint8),
                                   np.frombuffer(b"".join(new), dtype=np.uint8).reshape(-1, 16)]),
            info={"model": model, "revision": revision, **encoder_settings(cfg), "keyed_by": BY_TEXT},
        )
        assert len(merged) == old_n + len(new)
        if not dist.is_initialized() or dist.get_rank() == 0:
            merged.save(folder)
        stats.written = True
        if dist.is_initialized():
            dist.barrier()
    return vectors, torch.from_numpy(has_text), stats


def build_store(
    texts: Mapping[str, Any],
    path: PathLike,
    cfg: TextEncoderConfig,
    key_column: str,
    source_file: str = "",
    progress: bool = False,
    source: str = "item text",
) -> Tuple[TextStore, StoreStats]:
    """Encodes ``{raw item key: text}`` into a store at ``path`` keyed by those keys; ``key_column``
    (and ``source_file``) record where the keys come from: a data spec reading the store names the
    same column or says they hold the same ids (``text[i].store_key``).

    Re-running reuses the store's own vectors of unchanged texts (by hash, whatever their key) and
    leaves the files untouched when nothing changed; a different model or setting re-encodes all.
    Collective under a process group (every rank passes the same texts; rank 0 writes).
    """
    folder = Path(path)
    keys = [str(k) for k in texts]
    clean = [clean_text(t, f"{source} {k!r}") for k, t in texts.items()]
    model, revision = model_fingerprint(cfg.model, cfg.trust_remote_code)
    _check_writable(folder, "--store (the store's folder)")
    previous = _load_if_usable(folder, cfg, revision)
    vectors, has_text, hashes, stats, new, _ = _vectors_for(clean, previous, cfg, progress)
    keyed_by = f"column {key_column}" + (f" of {source_file}" if source_file else "")
    info = {"model": model, "revision": revision, **encoder_settings(cfg), "keyed_by": keyed_by,
            "key_column": key_column}
    unchanged = (previous is not None and not new and previous.keys == keys
                 and np.array_equal(previous.hashes, hashes) and previous.keyed_by == keyed_by)
    if unchanged:
        return previous, stats
    store = TextStore(vectors=vectors, has_text=has_text, hashes=hashes, keys=keys, info=info)
    if not dist.is_initialized() or dist.get_rank() == 0:
        store.save(folder)
    stats.written = True
    if dist.is_initialized():
        dist.barrier()
    return store, stats
