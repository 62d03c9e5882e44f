"""A Hugging Face model id where a checkpoint folder is expected: found in the local cache.

People name ColBERT models as PyLate and RAGatouille let them, by their Hub id
(``colbert-ir/colbertv2.0``). sie-index never downloads: an id is looked up in
the local Hugging Face cache, where ``huggingface_hub`` keeps what it fetched,
``<cache>/models--<org>--<name>/snapshots/<revision>/``, with ``refs/main``
naming the revision. The cache is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub`` (the
order ``huggingface_hub`` itself follows). An id not in the cache is an
:class:`~sie_index.errors.EncoderUnavailable` saying how to get the folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sie_index.errors import EncoderUnavailable

__all__ = ["CHECKPOINT_FILES", "checkpoint_folder", "hub_cache"]

CHECKPOINT_FILES = (
    "config.json, model.safetensors, the tokenizer's files (tokenizer.json or vocab.txt, "
    "tokenizer_config.json), and either modules.json with "
    "config_sentence_transformers.json and its Dense folders (PyLate) or "
    "artifact.metadata (Stanford ColBERT)"
)
"""What a ColBERT checkpoint folder holds, for error messages."""

_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def hub_cache() -> Path:
    """The local Hugging Face hub cache folder (it may not exist)."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def checkpoint_folder(path_or_id: str | Path) -> tuple[Path, str | None]:
    """The folder to load, and the Hub id when it came from the cache (else None).

    An existing folder is itself; a name shaped like a Hub id (``org/name`` or
    ``name``) that is no folder here is looked up in :func:`hub_cache`. Anything
    else is returned as given, for the loader to refuse with its own message.
    """
    path = Path(path_or_id)
    name = str(path_or_id)
    if path.exists() or not _MODEL_ID.fullmatch(name):
        return path, None
    cache = hub_cache()
    repo = cache / ("models--" + name.replace("/", "--"))
    snapshot = _snapshot(repo)
    if snapshot is None:
        raise EncoderUnavailable(
            f"{name!r} is not a folder, and the Hugging Face model {name!r} is not in the "
            f"local cache ({cache}); sie-index never downloads. Download it to a folder "
            f"(`huggingface-cli download {name} --local-dir DIR`, or `git clone` it) and "
            f"pass that folder. A ColBERT checkpoint folder holds {CHECKPOINT_FILES}."
        )
    return snapshot, name


def _snapshot(repo: Path) -> Path | None:
    """The snapshot ``refs/main`` names; without refs, the only snapshot there is."""
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file():
        revision = ref.read_text(encoding="utf-8").strip()
        folder = snapshots / revision
        return folder if revision and folder.is_dir() else None
    found = [p for p in snapshots.iterdir() if p.is_dir()] if snapshots.is_dir() else []
    # several snapshots and no ref: which one was meant cannot be told, so none is guessed
    return found[0] if len(found) == 1 else None
