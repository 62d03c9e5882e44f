"""Building a new index in a folder: the build's commit protocol.

A build takes the folder's write lock (a second writer gets
:class:`IndexLocked` at once), sweeps what dead writers left behind, and writes
one new segment folder (:mod:`storage.segment`) beside what is there: each
batch appends its token vectors and document ids and fsyncs them, then commits
its document rows in one SQLite transaction. :meth:`StoreBuilder.finish` trains
and fills the FAISS token index from the stored vectors, checksums every data
file, and commits a generation naming only the new segment
(:mod:`storage.commit`). A build that fails or is killed at any instant
leaves the folder holding the index it held before (or none, for a first
build); the next writer removes its remains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import faiss
import numpy as np

from storage.build_journal import (
    JOURNAL_NAME,
    BatchRecord,
    BuildJournal,
    read_journal,
    remove_journal,
    write_journal,
)
from storage.codec import (
    CODEC_INDEX_NAME,
    PROJECTION_NAME,
    VectorCodec,
    auto_codec,
    check_codec,
    fit_projection,
    project_rows,
    projection_bytes,
    train_sq8,
)
from storage.commit import commit_generation, next_number
from storage.errors import (
    CorruptIndex,
    InvalidInput,
    StorageError,
    mapped_os_errors,
    typed_os_errors,
)
from storage.fsio import atomic_replace
from storage.generations import CURRENT_NAME, read_pointer, remove_debris
from storage.growth import TRAINED_KEY, TrainingRecord, measure_training
from storage.lexicon import check_lexical_fields
from storage.lock import LOCK_NAME, WriteLock
from storage.manifest import MANIFEST_NAME, MAX_DIM, FileRecord, Manifest, check_encoder_record
from storage.segment import (
    SCRATCH_NAME,
    TOKENS_NAME,
    TRAINED_NAME,
    PendingDoc,
    SegmentWriter,
    check_vectors,
    segment_dirname,
)
from storage.token_index import (
    ADD_CHUNK_ROWS,
    INDEX_KINDS,
    TOKEN_INDEX_NAME,
    TRAIN_SAMPLE_MAX,
    TokenIndex,
    TokenIndexPlan,
    check_index_options,
    plan_token_index,
    takes_codes,
    training_rows,
)
from storage.vectors import TokenReader

__all__ = [
    "CodecChoice",
    "PendingDoc",
    "StoreBuilder",
    "check_build_options",
    "check_vectors",
    "write_codec_files",
    "write_first_segment_index",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodecChoice:
    """The codec a build asked for (:mod:`storage.codec`): its name, and the stored
    dimension (None: the encoder's, no projection)."""

    name: str = "f16"
    dim: int | None = None

    def exact(self, input_dim: int) -> bool:
        return self.name == "f16" and self.dim in (None, input_dim)


class _Projected:
    """A float16 scratch store seen through a projection (what training samples)."""

    def __init__(self, scratch: TokenReader, projection: np.ndarray | None) -> None:
        self.scratch = scratch
        self.projection = projection
        self.n_tokens = scratch.n_tokens
        self.dim = scratch.dim if projection is None else projection.shape[0]

    def sample_rows(self, rows: np.ndarray, chunk_rows: int) -> np.ndarray:
        sample = self.scratch.sample_rows(rows, chunk_rows)
        return sample if self.projection is None else project_rows(sample, self.projection)


def _train_codec(
    scratch: TokenReader,
    choice: CodecChoice,
    plan: TokenIndexPlan,
    *,
    input_dim: int,
    projection: np.ndarray | None,
    trained: faiss.Index | None,
) -> tuple[VectorCodec, faiss.Index | None]:
    """Fit the projection (unless given) and the quantizer on bounded seeded samples
    of the scratch vectors; returns the codec and, for ``pq``, the trained IVF-PQ."""
    dim = choice.dim or input_dim
    n = scratch.n_tokens
    if projection is None and dim != input_dim:
        rows = training_rows(n, min(n, TRAIN_SAMPLE_MAX), plan.seed)
        sample = scratch.sample_rows(rows, ADD_CHUNK_ROWS)
        projection = fit_projection(sample, dim)
        del sample
    view = _Projected(scratch, projection if scratch.dim != dim else None)
    quantizer: Any = None
    if choice.name == "sq8":
        rows = training_rows(n, min(n, TRAIN_SAMPLE_MAX), plan.seed)
        quantizer = train_sq8(view.sample_rows(rows, ADD_CHUNK_ROWS))
    elif choice.name == "pq":
        quantizer = trained if trained is not None else TokenIndex.train(plan, view)
        trained = quantizer
    codec = VectorCodec(choice.name, dim, input_dim, projection=projection, quantizer=quantizer)
    return codec, trained


def _transcode(
    segment: SegmentWriter, scratch: TokenReader, codec: VectorCodec, *, keep_scratch: bool
) -> None:
    """Write the segment's vector file from its float16 scratch, then drop the scratch
    (a journaled build keeps it until its commit: a resume checks its batches on it)."""
    project = scratch.dim != codec.dim
    with open(segment.folder / codec.file_name, "wb") as out:
        for start, stop in scratch.chunks(ADD_CHUNK_ROWS):
            rows = scratch.read_rows(start, stop).astype(np.float32)
            encoded = codec.encode(rows) if project else codec.encode_projected(rows)
            out.write(np.ascontiguousarray(encoded).tobytes())
        out.flush()
        os.fsync(out.fileno())
    scratch.close()
    if not keep_scratch:
        (segment.folder / SCRATCH_NAME).unlink()


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def write_codec_files(folder: Path, codec: VectorCodec) -> None:
    """The first segment's files that say how vectors are coded: the projection, and
    the ``sq8`` quantizer (the ``pq`` quantizer is ``trained.faiss``)."""
    if codec.projection is not None:
        data = projection_bytes(codec.projection)
        atomic_replace(folder / PROJECTION_NAME, lambda tmp: _write(tmp, data))
    if codec.name == "sq8":
        TokenIndex.save_index(codec.quantizer, folder / CODEC_INDEX_NAME)


def write_first_segment_index(
    segment: SegmentWriter,
    plan: TokenIndexPlan,
    progress: Callable[[int], None] | None = None,
    *,
    trained: faiss.Index | None = None,
    choice: CodecChoice | None = None,
    input_dim: int | None = None,
    projection: np.ndarray | None = None,
    keep_scratch: bool = False,
    phase: Callable[[str], None] | None = None,
) -> tuple[VectorCodec, TrainingRecord]:
    """Write the FAISS and codec files of a build's or a compaction's segment.

    A segment that stored its vectors with a codec already (a compaction copying
    rows) keeps it. Otherwise its vectors are float16 of ``input_dim`` (or with
    ``projection``, already projected) and ``choice`` says what to keep: beyond
    exact float16, the projection and the quantizer are trained on samples and the
    scratch is transcoded. Then the token index is built over the decoded stored
    vectors (so an add, which encodes what it stores, equals a build), with
    ``trained`` (reuse that trained index, no training); for the ``pq`` codec the
    stored codes are the index, and only its trained copy is written.
    Returns the segment's codec, and what its quantizer looks like on the segment's
    stored vectors (:func:`storage.growth.measure_training`), for the manifest.
    """
    segment.close_data()
    choice = choice or CodecChoice()
    codec = segment.codec

    def say(text: str) -> None:
        if phase is not None:
            phase(text)

    if codec is None:
        in_dim = input_dim or segment.dim
        if choice.exact(in_dim) and projection is None:
            codec = VectorCodec("f16", segment.dim, segment.dim)
            if segment.tokens.file_name == SCRATCH_NAME:  # ``auto`` chose to keep float16
                os.replace(segment.folder / SCRATCH_NAME, segment.folder / codec.file_name)
        else:
            scratch_dim = segment.dim
            scratch = TokenReader(
                segment.folder, scratch_dim, segment.n_tokens, file_name=SCRATCH_NAME
            )
            say(f"training the {choice.name} codec on sampled tokens")
            try:
                codec, trained = _train_codec(
                    scratch,
                    choice,
                    plan,
                    input_dim=in_dim,
                    projection=projection,
                    trained=trained,
                )
                _transcode(segment, scratch, codec, keep_scratch=keep_scratch)
            finally:
                scratch.close()
    write_codec_files(segment.folder, codec)
    reader = TokenReader(segment.folder, codec.dim, segment.n_tokens, codec=codec)
    try:
        if codec.name == "pq":
            assert trained is not None
            TokenIndex.save_index(trained, segment.folder / TRAINED_NAME)
            if progress is not None:
                progress(segment.n_tokens)
            return codec, measure_training(plan, trained, reader)
        if trained is None and plan.kind != "flat" and plan.kind != "hnsw":
            say(f"training the {plan.factory_string()} token index on sampled tokens")
        say(f"adding {segment.n_tokens:,} tokens to the token index")
        token_index = TokenIndex.build(plan, reader, progress, trained=trained)
        record = measure_training(plan, token_index.index, reader)
    finally:
        reader.close()
    token_index.save(segment.folder / TOKEN_INDEX_NAME)
    if takes_codes(plan):
        TokenIndex.save_index(token_index.trained_copy(), segment.folder / TRAINED_NAME)
    return codec, record


def check_build_options(
    encoder_spec: Mapping[str, Any],
    index_kind: str,
    index_options: Mapping[str, Any] | None,
    codec: CodecChoice,
    input_dim: int,
) -> None:
    """Refuse, before anything is encoded, what :meth:`StoreBuilder.finish` would
    refuse after: an encoder spec no manifest may record, an unknown index kind or
    option, an option out of its range, a codec that cannot be. The commit checks
    all that again (:mod:`storage.commit`); this only fails sooner."""
    try:
        check_encoder_record(dict(encoder_spec), "the encoder spec")
    except CorruptIndex as exc:
        raise InvalidInput(str(exc)) from exc
    if index_kind not in INDEX_KINDS:
        raise InvalidInput(
            f"unknown index kind {index_kind!r}; choose one of {', '.join(INDEX_KINDS)}"
        )
    check_index_options(index_options)
    check_codec(codec.name, codec.dim, input_dim)
    if codec.name == "pq" and index_kind not in ("auto", "ivf-pq"):
        raise InvalidInput(
            f"codec 'pq' stores the ivf-pq index's own codes; index kind {index_kind!r} has "
            "none (use index kind 'ivf-pq' or 'auto', or codec 'sq8')"
        )


def _claim_folder(target: Path) -> bool:
    """Make sure ``target`` is a folder sie-index may write; True when this call made it."""
    if target.exists() and not target.is_dir():
        raise StorageError(f"{target} exists and is not a folder; refusing to replace it")
    try:
        target.mkdir(parents=True)
        return True
    except FileExistsError:
        pass
    names = set(os.listdir(target))
    ours = {CURRENT_NAME, LOCK_NAME, MANIFEST_NAME, JOURNAL_NAME} & names
    if names and not ours:
        raise StorageError(
            f"{target} exists and is not a sie-index index; refusing to write into it"
        )
    return False


class StoreBuilder:
    """Writes a new index at ``target`` (a first build, or a rebuild with ``overwrite``);
    use as a context manager, so that a failure frees the lock and throws the
    unfinished work away, or, for a journaled build that stored a batch, keeps it
    for a resume (:mod:`storage.build_journal`)."""

    def __init__(
        self,
        target: Path,
        dim: int,
        *,
        overwrite: bool = False,
        codec: CodecChoice | VectorCodec | None = None,
        request: Mapping[str, Any] | None = None,
        resume: bool = False,
        lexical_fields: Sequence[str] | None = (),
    ) -> None:
        """``dim`` is the encoder's dimension. ``lexical_fields``: the segment gets a
        lexicon (:mod:`storage.lexicon`) of the stored text and these metadata fields
        (the default: the text alone); None: no lexicon. ``codec``: what to store (a
        :class:`CodecChoice`, trained at :meth:`finish`), or a trained codec to
        encode with as documents arrive (a fresh build equal to another index).

        ``request`` (plain JSON: what the caller was asked to build) makes the build
        journaled, for a :class:`CodecChoice` build: each :meth:`add` then takes an
        input digest, and a build that fails after storing a batch keeps its batches.
        ``resume`` continues the interrupted build of the same request that the
        folder's journal names: :attr:`resumed` lists the batches kept, which the
        caller checks against its corpus (:meth:`check_resumed`) and does not add
        again. Without a journal to resume, ``resume`` builds from the start.
        """
        self.target = Path(target)
        self.request = dict(request) if request is not None else None
        self.resumed: list[BatchRecord] = []
        self.lexical_fields = check_lexical_fields(lexical_fields)
        if type(dim) is not int or not 0 < dim <= MAX_DIM:
            raise InvalidInput(f"dimension must be an integer in 1..{MAX_DIM}, got {dim!r}")
        codec = codec if codec is not None else CodecChoice()
        if isinstance(codec, CodecChoice):
            check_codec(codec.name, codec.dim, dim)
        elif codec.input_dim != dim:
            raise InvalidInput(f"the codec encodes {codec.input_dim} dimensions, not {dim}")
        if self.request is not None and not isinstance(codec, CodecChoice):
            raise InvalidInput("a journaled build takes a codec choice, not a trained codec")
        self.codec = codec
        with mapped_os_errors(str(self.target)):
            self._made_folder = _claim_folder(self.target)
        self.lock = WriteLock(self.target)
        try:
            with mapped_os_errors(str(self.target)):
                self.lock.acquire()
        except BaseException:
            self._drop_made_folder()
            raise
        self.segment: SegmentWriter | None = None
        try:
            with mapped_os_errors(str(self.target)):
                self._start(dim, overwrite, codec, resume)
        except BaseException:
            self._release()
            raise
        self.dim = dim

    def _start(
        self, dim: int, overwrite: bool, codec: CodecChoice | VectorCodec, resume: bool
    ) -> None:
        current, committed = self._current_generation()
        journal = self._live_journal(current)
        if journal is not None and not resume and current is None and not overwrite:
            raise StorageError(
                f"{self.target} holds an interrupted build: resume it (resume=True), or "
                "rebuild it from the start (overwrite=True)"
            )
        if current is not None and not overwrite:
            raise StorageError(
                f"{self.target} already holds an index; rebuild it with overwrite=True"
            )
        # a rebuild keeps the old index whole until its commit: sweep only debris
        remove_debris(self.target, current, committed=committed)
        choice = codec if isinstance(codec, CodecChoice) else None
        file_name = TOKENS_NAME if choice is None or choice.exact(dim) else SCRATCH_NAME
        if journal is not None and resume and self._resume(journal, dim, file_name):
            return
        if journal is not None:  # not resumed: its batches are thrown away
            self._discard(journal)
        self.generation = next_number(self.target, current)
        self.segment = SegmentWriter(
            self.target,
            self.generation,
            dim,
            doc_base=0,
            token_base=0,
            generation=self.generation,
            codec=None if choice is not None else codec,  # type: ignore[arg-type]
            file_name=file_name,
            journaled=self.request is not None,
            lexical_fields=self.lexical_fields,
        )
        if self.request is not None:
            write_journal(
                self.target,
                BuildJournal(
                    generation=self.generation,
                    segment=self.segment.name,
                    request={**self.request, "file_name": file_name},
                ),
            )

    FINISH_SETTINGS = frozenset({"index_kind", "index_options"})
    """Request keys a resume may change: they are used only by :meth:`finish`."""

    def _live_journal(self, current: int | None) -> BuildJournal | None:
        """The journal of an interrupted build, if one is here: a damaged one is
        removed (its batches cannot be trusted), one whose build committed is
        cleared (with the scratch file it kept till then)."""
        try:
            journal = read_journal(self.target)
        except CorruptIndex as exc:
            log.warning("%s; an interrupted build there is not resumable", exc)
            remove_journal(self.target)
            return None
        if journal is not None and current is not None and journal.generation <= current:
            with contextlib.suppress(FileNotFoundError):
                (self.target / journal.segment / SCRATCH_NAME).unlink()
            remove_journal(self.target)
            return None
        return journal

    def _resume(self, journal: BuildJournal, dim: int, file_name: str) -> bool:
        """Reopen the journal's segment; False when it cannot be resumed (then it is
        thrown away and the build starts over)."""
        asked = {**(self.request or {}), "file_name": file_name}
        # what shaped the stored batches must match; the token index's settings
        # (kind, options) only shape the finishing step, so a resume may change them
        # (a build refused at the end, say too few tokens for ivf-pq, resumes as flat)
        differ = sorted(
            k
            for k in set(asked) | set(journal.request)
            if k not in self.FINISH_SETTINGS and asked.get(k) != journal.request.get(k)
        )
        if differ:
            named = [k for k in differ if k != "file_name"] or ["codec"]  # file_name: by codec
            raise InvalidInput(
                f"{self.target}: the interrupted build was asked for other settings "
                f"({', '.join(named)}); resume it with the same ones, or rebuild it from "
                "the start (overwrite=True)"
            )
        if (
            segment_dirname(journal.generation) != journal.segment
            or not (self.target / journal.segment).is_dir()
        ):
            log.warning("%s: the interrupted build's segment is gone; building anew", self.target)
            return False
        try:
            self.segment, self.resumed = SegmentWriter.reopen(
                self.target,
                journal.generation,
                dim,
                generation=journal.generation,
                file_name=file_name,
                lexical_fields=self.lexical_fields,
            )
        except CorruptIndex as exc:
            log.warning("%s; building anew", exc)
            return False
        self.generation = journal.generation
        return True

    def _discard(self, journal: BuildJournal) -> None:
        """Remove an interrupted build's segment (the journal names it: it is ours)."""
        shutil.rmtree(self.target / journal.segment, ignore_errors=True)
        remove_journal(self.target)

    def check_resumed(self, position: int, input_digest: str) -> None:
        """Refuse a resume whose corpus is not the interrupted build's: batch
        ``position`` of the corpus must have the digest its record kept."""
        if self.resumed[position].input_digest != input_digest:
            first = self.resumed[position].first_doc
            raise InvalidInput(
                f"{self.target}: the corpus is not the one the interrupted build read "
                f"(documents {first}..{first + self.resumed[position].docs - 1} differ); "
                "resume with the same corpus, or rebuild it from the start (overwrite=True)"
            )

    def _current_generation(self) -> tuple[int | None, bool]:
        """The committed generation, or None for no index; and whether ``CURRENT`` is sound.

        A format-1 index, or one whose pointer is damaged, counts as generation 0:
        it is an index (rebuilding it needs ``overwrite``), and it is replaced whole.
        """
        fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            pointer = read_pointer(fd, str(self.target))
        except StorageError:
            return 0, False
        finally:
            os.close(fd)
        if pointer is not None:
            return pointer.generation, True
        return (0 if (self.target / MANIFEST_NAME).exists() else None), False

    @typed_os_errors
    def add(self, batch: Sequence[PendingDoc], *, input_digest: str | None = None) -> None:
        """Store one batch: all of it, or (on any error) none of it. A journaled
        build's batches come with the caller's ``input_digest`` of their documents."""
        assert self.segment is not None
        if (input_digest is None) != (self.request is None):
            raise InvalidInput("a journaled build's batches, and only they, take an input digest")
        checked = [check_vectors(d.vectors, self.dim, doc_id=d.external_id) for d in batch]
        existing = self.segment.docs.first_existing([d.external_id for d in batch])
        if existing is not None:
            raise InvalidInput("duplicate document id", doc_id=existing)
        self.segment.add(batch, checked, input_digest=input_digest)

    @property
    def n_docs(self) -> int:
        return self.segment.n_docs if self.segment is not None else 0

    @property
    def n_tokens(self) -> int:
        return self.segment.n_tokens if self.segment is not None else 0

    @typed_os_errors
    def finish(
        self,
        *,
        encoder_spec: Mapping[str, Any],
        index_kind: str = "auto",
        index_options: Mapping[str, Any] | None = None,
        progress: Callable[[int], None] | None = None,
        plan: TokenIndexPlan | None = None,
        trained: faiss.Index | None = None,
        phase: Callable[[str], None] | None = None,
        pool_factor: int = 1,
        training: Callable[[int], TrainingRecord | None] | None = None,
    ) -> Manifest:
        """Build the token index, write the manifest and commit the generation.

        ``plan`` and ``trained`` (another index's plan and its empty trained FAISS
        index) replace ``index_kind`` and training: a fresh build with the quantizer
        of another index (and with the codec it was given, that index's codec).
        ``pool_factor``: the factor the documents' vectors were pooled by, recorded in
        the manifest (the commit refuses one no reader accepts). ``training`` gives,
        for the index's token count, the training record to keep instead of measuring
        one (:mod:`storage.growth`; None: unknown): a reshard keeps its source's.
        """
        assert self.segment is not None
        choice = self.codec if isinstance(self.codec, CodecChoice) else None
        if choice is not None and choice.name == "auto":
            choice = CodecChoice(auto_codec(self.n_tokens), choice.dim)
        if plan is None:
            stored_dim = self.codec.dim if not isinstance(self.codec, CodecChoice) else None
            plan = plan_token_index(
                index_kind,
                self.n_tokens,
                stored_dim or (choice.dim if choice else None) or self.dim,
                codec=choice.name if choice else self.codec.name,
                **check_index_options(index_options),
            )
        if self.segment.codec is not None and self.segment.codec.name == "pq" and trained is None:
            trained = self.segment.codec.quantizer
        codec, measured = write_first_segment_index(
            self.segment,
            plan,
            progress,
            trained=trained,
            choice=choice,
            input_dim=self.dim,
            keep_scratch=self.request is not None,
            phase=phase,
        )
        record = self.segment.finish()
        kept = measured if training is None else training(record.tokens)
        token_index = plan.to_dict()
        if kept is not None:
            token_index[TRAINED_KEY] = kept.to_dict()
        manifest = Manifest(
            generation=self.generation,
            encoder=dict(encoder_spec),
            dim=codec.dim,
            token_index=token_index,
            codec=codec.name,
            documents=record.documents,
            live_documents=record.documents,
            tokens=record.tokens,
            segments=[record],
            deleted=FileRecord(bytes=0, sha256_blocks=[]),
            pool_factor=pool_factor,
            lexical_fields=self.lexical_fields,
        )
        manifest = commit_generation(self.target, manifest, np.zeros(0, np.int64), open_first=True)
        if self.request is not None:  # committed: the journal and its scratch go
            with contextlib.suppress(FileNotFoundError):
                (self.segment.folder / SCRATCH_NAME).unlink()
            remove_journal(self.target)
        self.segment = None
        self.lock.release()
        return manifest

    def abort(self) -> None:
        """Throw the unfinished segment (and a journaled build's journal) away and
        free the lock."""
        if self.segment is not None:
            self.segment.abort()
            self.segment = None
            if self.request is not None:
                remove_journal(self.target)
        self._release()

    def suspend(self) -> None:
        """Keep what a journaled build stored, for a resume, and free the lock."""
        assert self.segment is not None
        with contextlib.suppress(Exception):
            self.segment.docs.close()
        with contextlib.suppress(OSError, ValueError):
            self.segment.close_data()
        log.info(
            "%s: the build stopped after %d documents; they are kept: resume it "
            "(resume=True) to encode only the rest",
            self.target,
            self.segment.n_docs,
        )
        self.segment = None
        self._release()

    def _release(self) -> None:
        if self.lock.held:
            self._drop_made_folder()
            self.lock.release()

    def _drop_made_folder(self) -> None:
        """A first build that failed leaves no folder behind (only its lock file was in it)."""
        if not self._made_folder:
            return
        names = set(os.listdir(self.target))
        if names <= {LOCK_NAME}:
            with contextlib.suppress(OSError):
                (self.target / LOCK_NAME).unlink()
                self.target.rmdir()

    def __enter__(self) -> StoreBuilder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self.lock.held:
            if self.request is not None and self.segment is not None and self.segment.n_docs:
                self.suspend()
            else:
                self.abort()
