"""Building a sharded index: N shards side by side, one shared quantizer, one commit.

:class:`ShardedBuilder` takes the sharded folder's write lock, records the build
in ``BUILDING`` (its generation and shard count), and writes one shard folder
per shard (:mod:`storage.shard_map`), each through an ordinary
:class:`storage.builder.StoreBuilder`; documents go to the shard their id routes
to. :meth:`ShardedBuilder.finish` trains the token index once, on a bounded
seeded sample drawn across every shard's stored vectors, finishes each shard
with that trained index (each shard commits as a single index does), and
commits the shard map last. A build that fails or is killed leaves the old
sharded index (or none); the next build sweeps the shard folders no map names.

Resume: a build started again with ``resume`` after a failure or a kill keeps
the shards of the interrupted build that committed (their documents are not
sent again: :meth:`ShardedBuilder.wants`), rebuilds the others, and takes the
shared quantizer from a committed shard.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from storage.builder import CodecChoice, StoreBuilder
from storage.codec import auto_codec
from storage.errors import InvalidInput, StorageError, mapped_os_errors
from storage.failpoints import failpoint
from storage.fsio import atomic_replace
from storage.generations import CURRENT_NAME, LEASE_NAME
from storage.growth import TrainingRecord, training_of
from storage.lock import LOCK_NAME, WriteLock
from storage.manifest import MANIFEST_NAME
from storage.segment import PendingDoc
from storage.shard_map import (
    BUILDING_NAME,
    MAX_SHARDS,
    SHARD_MAP_NAME,
    ShardMap,
    is_shard_dirname,
    read_shard_map,
    shard_dirname,
    shard_of,
    write_shard_map,
)
from storage.snapshot import read_manifest
from storage.store_writer import StoreWriter
from storage.token_index import (
    TokenIndex,
    TokenIndexPlan,
    check_index_options,
    plan_token_index,
)
from storage.vectors import TokenReader

__all__ = ["ShardedBuilder", "check_shard_count"]


def check_shard_count(shards: Any) -> int:
    if type(shards) is not int or not 1 <= shards <= MAX_SHARDS:
        raise InvalidInput(f"shards must be an integer in 1..{MAX_SHARDS}, got {shards!r}")
    return shards


class _Across:
    """The stored vectors of several shards seen as one store, for training samples."""

    def __init__(self, readers: Sequence[TokenReader]) -> None:
        self.readers = list(readers)
        self.dim = readers[0].dim
        self.bases = np.cumsum([0, *(r.n_tokens for r in readers)])
        self.n_tokens = int(self.bases[-1])

    def sample_rows(self, rows: np.ndarray, chunk_rows: int) -> np.ndarray:
        parts = []
        for reader, lo, hi in zip(self.readers, self.bases[:-1], self.bases[1:], strict=True):
            mine = rows[(rows >= lo) & (rows < hi)] - lo
            if len(mine):
                parts.append(reader.sample_rows(mine, chunk_rows))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


def _quantizer_of(index: Path) -> tuple[TokenIndexPlan, faiss.Index | None, CodecChoice]:
    """The token-index plan, trained (empty) FAISS index and codec of the index at
    ``index``: what shards built with it share."""
    with StoreWriter(index, merge_policy=None) as w:
        codec = w.codec()
        trained = w.trained_index() if w.plan.kind != "hnsw" else None
        return w.plan, trained, CodecChoice(codec.name)


def _carried_training(index: Path) -> Callable[[int], TrainingRecord | None]:
    """What a shard of a reshard of ``index`` records of its quantizer's training. The
    quantizer is the source's, trained when the source held ``then`` of the ``now``
    tokens it holds: a shard of ``n`` tokens keeps the source's growth factor (its
    record says ``n * then / now``) and threshold, or the source's unknown."""
    manifest = read_manifest(index)
    plan = TokenIndexPlan.from_dict(manifest.token_index, str(index))
    record = training_of(manifest.token_index, plan, str(index))
    now = manifest.tokens

    def scaled(n: int) -> TrainingRecord | None:
        if record is None or record.tokens == 0 or now == 0:
            return None
        then = max(round(n * record.tokens / now), 1 if n else 0)
        return TrainingRecord(tokens=then, far_similarity=record.far_similarity if then else None)

    return scaled


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _held(shard: Path) -> bool:
    """Whether a reader holds a generation of the shard folder ``shard`` (then it stays,
    for a later build's sweep, as a single index keeps a generation a reader holds)."""
    for gen in shard.glob("gen-*"):
        try:
            fd = os.open(gen / LEASE_NAME, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    return False


def _committed(folder: Path) -> bool:
    return (folder / CURRENT_NAME).is_file()


class ShardedBuilder:
    """Writes a sharded index at ``target``; use as a context manager, so a failure
    throws the unfinished shards away and frees the lock."""

    def __init__(
        self,
        target: Path,
        n_shards: int,
        dim: int,
        *,
        codec: CodecChoice | None = None,
        overwrite: bool = False,
        resume: bool = False,
        request: Mapping[str, Any] | None = None,
    ) -> None:
        """``request``: what the build was asked for (encoder spec, index kind and
        options, as plain JSON), recorded in ``BUILDING``; a resume must ask for the
        same, or its shards would not belong to one index."""
        self.target = Path(target)
        self.request = dict(request or {})
        self.n_shards = check_shard_count(n_shards)
        self.dim = dim
        self.codec = codec or CodecChoice()
        if self.n_shards > 1 and (self.codec.name == "sq8" or self.codec.dim is not None):
            raise InvalidInput(
                "a sharded index shares one quantizer across its shards; codec 'sq8' and a "
                "projection (dim) are trained per index: use codec 'f16', 'pq' or 'auto'"
            )
        with mapped_os_errors(str(self.target)):
            self._claim()
            self.lock = WriteLock(self.target)
            self.lock.acquire()
        self.builders: dict[int, StoreBuilder] = {}
        try:
            with mapped_os_errors(str(self.target)):
                self._start(overwrite, resume)
        except BaseException:
            self.abort()
            raise

    def _claim(self) -> None:
        if self.target.exists() and not self.target.is_dir():
            raise StorageError(f"{self.target} exists and is not a folder; refusing to replace it")
        self.target.mkdir(parents=True, exist_ok=True)
        names = set(os.listdir(self.target))
        if {CURRENT_NAME, MANIFEST_NAME} & names:
            raise StorageError(
                f"{self.target} holds a single (unsharded) index; build the sharded one elsewhere"
            )
        ours = {SHARD_MAP_NAME, BUILDING_NAME, LOCK_NAME} & names
        if names and not ours and not any(is_shard_dirname(n) for n in names):
            raise StorageError(
                f"{self.target} exists and is not a sie-index index; refusing to write into it"
            )

    def _start(self, overwrite: bool, resume: bool) -> None:
        self.previous = read_shard_map(self.target)
        building = self._building()
        resuming = resume and building is not None
        if self.previous is not None and not overwrite and not resuming:
            raise StorageError(
                f"{self.target} already holds a sharded index"
                + ("" if not resume else " and no interrupted build to resume")
                + "; pass overwrite to rebuild it"
            )
        self.kept: set[int] = set()
        if resuming:
            assert building is not None
            asked = {"shards": self.n_shards, "request": self.request}
            started = {"shards": building["shards"], "request": building.get("request", {})}
            if asked != started:
                raise InvalidInput(
                    f"{self.target}: the interrupted build was started with {started}; "
                    f"resume it with the same shards, encoder and index settings, not {asked}"
                )
            self.generation = int(building["generation"])
            self.kept = {i for i in range(self.n_shards) if _committed(self._shard_folder(i))}
        else:
            used = [self.previous.generation if self.previous else 0]
            if building is not None:
                used.append(int(building["generation"]))
            self.generation = max(used) + 1
            body = json.dumps(
                {"generation": self.generation, "shards": self.n_shards, "request": self.request}
            )
            atomic_replace(self.target / BUILDING_NAME, lambda tmp: _write(tmp, body))
        self._sweep(keep_build=True)
        for i in range(self.n_shards):
            if i not in self.kept:
                folder = self._shard_folder(i)
                if folder.exists():  # an interrupted shard of this build: ours, never committed
                    shutil.rmtree(folder)
                self.builders[i] = StoreBuilder(folder, self.dim, codec=self.codec)

    def _building(self) -> dict[str, Any] | None:
        try:
            raw = json.loads((self.target / BUILDING_NAME).read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(raw, dict) or not all(
            type(raw.get(k)) is int for k in ("generation", "shards")
        ):
            return None
        return raw

    def _shard_folder(self, position: int) -> Path:
        return self.target / shard_dirname(self.generation, position)

    def _sweep(self, *, keep_build: bool) -> None:
        """Remove shard folders that neither the committed map nor (``keep_build``)
        this build names: only folders named as sharded builds name theirs."""
        keep = set(self.previous.shards) if self.previous else set()
        if keep_build:
            keep |= {shard_dirname(self.generation, i) for i in range(self.n_shards)}
        for name in os.listdir(self.target):
            if is_shard_dirname(name) and name not in keep and not _held(self.target / name):
                shutil.rmtree(self.target / name, ignore_errors=True)

    def wants(self, external_id: str) -> bool:
        """Whether a document still has to be stored (its shard did not commit yet)."""
        return shard_of(external_id, self.n_shards) not in self.kept

    def add(self, batch: Sequence[PendingDoc]) -> None:
        """Store each document of ``batch`` in its shard (documents of kept shards are
        skipped: they are there already)."""
        groups: dict[int, list[PendingDoc]] = {}
        for doc in batch:
            groups.setdefault(shard_of(doc.external_id, self.n_shards), []).append(doc)
        for position, docs in sorted(groups.items()):
            if position in self.builders:
                self.builders[position].add(docs)

    @property
    def n_tokens(self) -> int:
        return sum(b.n_tokens for b in self.builders.values())

    def _shared_quantizer(
        self, index_kind: str, index_options: Mapping[str, Any] | None
    ) -> tuple[TokenIndexPlan, faiss.Index | None, CodecChoice]:
        if self.kept:  # resume: the quantizer the committed shards were built with
            return _quantizer_of(self._shard_folder(min(self.kept)))
        readers = []
        for b in self.builders.values():
            assert b.segment is not None
            b.segment.close_data()
            readers.append(
                TokenReader(
                    b.segment.folder, self.dim, b.n_tokens, file_name=b.segment.tokens.file_name
                )
            )
        try:
            view = _Across(readers)
            choice = self.codec
            if choice.name == "auto":
                choice = CodecChoice(auto_codec(view.n_tokens))
            plan = plan_token_index(
                index_kind,
                view.n_tokens,
                self.dim,
                codec=choice.name,
                **check_index_options(index_options),
            )
            trained = None
            if plan.kind not in ("flat", "hnsw"):
                trained = TokenIndex.train(plan, view)
        finally:
            for reader in readers:
                reader.close()
        return plan, trained, choice

    def finish(
        self,
        *,
        encoder_spec: Mapping[str, Any],
        index_kind: str = "auto",
        index_options: Mapping[str, Any] | None = None,
        progress: Callable[[int], None] | None = None,
        quantizer_of: Path | None = None,
    ) -> ShardMap:
        """Train the shared quantizer (or with ``quantizer_of``, take that index's
        trained quantizer and codec: a reshard of its vectors), commit every shard,
        then the shard map."""
        with mapped_os_errors(str(self.target)):
            carried = None
            if quantizer_of is not None:
                plan, trained, choice = _quantizer_of(quantizer_of)
                carried = _carried_training(quantizer_of)
            else:
                plan, trained, choice = self._shared_quantizer(index_kind, index_options)
            for position in sorted(self.builders):
                builder = self.builders[position]
                builder.codec = choice
                builder.finish(
                    encoder_spec=encoder_spec,
                    plan=plan,
                    trained=trained,
                    progress=progress,
                    training=carried,
                )
                self.kept.add(position)
                failpoint(f"shards:after-shard-{position}")
            del self.builders
            self.builders = {}
            shard_map = ShardMap(
                generation=self.generation,
                shards=[shard_dirname(self.generation, i) for i in range(self.n_shards)],
                token_index=plan.to_dict(),
            )
            failpoint("shards:before-map")
            write_shard_map(self.target, shard_map)
            self.previous = shard_map
            (self.target / BUILDING_NAME).unlink()
            with contextlib.suppress(OSError):
                self._sweep(keep_build=False)
            self.lock.release()
        return shard_map

    def abort(self) -> None:
        """Throw the unfinished shards away (committed shards of this build stay, for
        a resume) and free the lock."""
        for builder in self.builders.values():
            with contextlib.suppress(Exception):
                builder.abort()
        self.builders = {}
        if getattr(self, "lock", None) is not None and self.lock.held:
            self.lock.release()

    def __enter__(self) -> ShardedBuilder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:
            self.abort()
