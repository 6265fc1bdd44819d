"""Distributed ingest with Ray: read and chunk in tasks, encode in actors, write through one store.

`index_with_ray` is `m3rag.index_files` on a Ray cluster, and ``m3rag index --ray`` runs it. It
builds one streaming Ray Data pipeline::

    files ──read_file + chunk_document (tasks)──> chunk rows ──M3Encoder (actors)──> rows
          ──driver: whole documents, upsert, commit every N──> the store

* **Read and chunk** run as Ray tasks, one file per task, with the very functions
  ``m3rag index`` uses (`m3rag.ingest.read_file`, `m3rag.ingest.chunk_document`), so ids,
  chunk metadata (`m3rag.rollup`) and problems are the same. Only the tokenizer is loaded
  there. A document whose ``doc_sha256`` the store already holds is not chunked (resume).
* **Encode** runs in an actor pool of [`M3Encoder`][m3rag.M3Encoder]s: one actor per GPU
  (``num_gpus=1``) when the cluster has GPUs, CPU actors otherwise. Embeddings travel as raw
  float32/int64 bytes, so what reaches the driver is bit for bit what the encoder returned.
* **Write** happens on the driver, through any [`WritableStore`][m3rag.index.protocol.WritableStore]
  (a [`Collection`][m3rag.Collection], or a vector database behind the protocol): a document's
  chunks are upserted together once all of them have arrived, the stale chunks of a changed
  document are deleted, and commits fall between documents, so an interrupted run never leaves
  half a document behind and a rerun picks up where it stopped. Upserts make a repeated write
  harmless.

`encode_with_ray` is the same pipeline without a store: it yields `EncodedBatch` shards of chunk
documents with their [`M3Output`][m3rag.M3Output], ready for
[`Collection.add(..., embeddings=...)`][m3rag.Collection.add].

Ray is imported lazily (``pip install "m3rag[ray]"``). The model folder (or hub cache) must be
readable on every node.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from m3rag._inputs import check_positive_int
from m3rag._optional import require
from m3rag.errors import DistributedError, M3RagError
from m3rag.ingest import (
    IndexProgress,
    IndexReport,
    Problem,
    chunk_document,
    count_documents,
    discover,
    document_sha256,
    input_paths,
    make_chunker,
    read_file,
)
from m3rag.rollup import CONTENT_SHA, PARENT_ID
from m3rag.types import HEADS, Document, Head, M3Output

if TYPE_CHECKING:
    from m3rag.chunking import Chunker
    from m3rag.index.protocol import WritableStore

__all__ = ["EncodedBatch", "encode_with_ray", "index_with_ray"]

logger = logging.getLogger(__name__)

# Chunks per upsert call on the driver (the embeddings are computed: this only bounds memory
# and the size of one request to a remote store).
_UPSERT_ROWS = 256

# What a row of the pipeline is: one chunk, or one document skipped or not indexed.
_CHUNK, _SKIPPED, _PROBLEM = "chunk", "skipped", "problem"


@dataclass(frozen=True)
class EncodedBatch:
    """Chunks of whole documents and their embeddings, one shard of `encode_with_ray`.

    Attributes:
        documents: Chunk documents (ids ``"{parent_id}#{n}"``, metadata as `m3rag.rollup`).
        embeddings: Their [`M3Output`][m3rag.M3Output], in the same order.
    """

    documents: list[Document]
    embeddings: M3Output


# -- the pipeline's stages (run on the workers) -------------------------------------------------


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("kind", pa.string()),
            ("parent_id", pa.string()),
            ("source", pa.string()),
            ("id", pa.string()),
            ("text", pa.string()),
            ("metadata", pa.string()),
            ("doc_sha256", pa.string()),
            ("n_chunks", pa.int64()),
            ("reason", pa.string()),
            ("line", pa.int64()),
            ("order", pa.int64()),
        ]
    )


@lru_cache(maxsize=4)
def _chunker(model: str, chunk_tokens: int, overlap: int | None) -> Chunker:
    """The chunker `index_files` would build, from the tokenizer alone (cached per worker)."""
    from m3rag._hub import resolve_model_dir
    from m3rag._modelfiles import load_tokenizer
    from m3rag.encoder._checkpoint import inspect_checkpoint

    info = inspect_checkpoint(resolve_model_dir(model))
    tokenizer = load_tokenizer(
        info.folder, info.config, needs=("cls", "sep", "pad"), trust_remote_code=False
    )
    return make_chunker(tokenizer, info.max_length, chunk_tokens=chunk_tokens, overlap=overlap)


_SKIP_CACHE: dict[str, frozenset[str]] = {}


def _skip_set(ref: Any) -> frozenset[str]:
    """The resume set, fetched once per worker process from the object store."""
    key = ref.hex()
    if key not in _SKIP_CACHE:
        import ray

        _SKIP_CACHE.clear()
        _SKIP_CACHE[key] = ray.get(ref)
    return _SKIP_CACHE[key]


def _row(kind: str, order: int, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(
        ("parent_id", "source", "id", "text", "metadata", "doc_sha256", "reason"), ""
    )
    row.update(kind=kind, n_chunks=0, line=-1, order=order)
    row.update(values)
    return row


def _read_and_chunk(
    batch: Any, *, model: str, chunk_tokens: int, overlap: int | None, skip: Any
) -> Any:
    """Files (``path``, ``root``, ``order``) -> one row per chunk, skipped document or problem."""
    import pyarrow as pa

    shas = _skip_set(skip)
    rows: list[dict[str, Any]] = []
    for item in batch.to_pylist():
        path, order = Path(item["path"]), int(item["order"])
        for doc, problem in read_file(path, Path(item["root"])):
            if doc is None:
                rows.append(_problem_row(problem or Problem(path, "unreadable"), order))
                continue
            parent, source = str(doc.id), str(doc.metadata.get("source", ""))
            sha = document_sha256(doc)
            if sha in shas:
                rows.append(_row(_SKIPPED, order, parent_id=parent, source=source))
                continue
            chunks, problem = chunk_document(
                doc, _chunker(model, chunk_tokens, overlap), sha256=sha
            )
            if problem is not None:
                rows.append(_problem_row(problem, order, parent_id=parent))
                continue
            rows.extend(
                _row(
                    _CHUNK,
                    order,
                    parent_id=parent,
                    source=source,
                    id=str(c.id),
                    text=c.text,
                    metadata=json.dumps(dict(c.metadata), ensure_ascii=False),
                    doc_sha256=sha,
                    n_chunks=len(chunks),
                )
                for c in chunks
            )
    return pa.Table.from_pylist(rows, schema=_schema())


def _problem_row(problem: Problem, order: int, parent_id: str = "") -> dict[str, Any]:
    return _row(
        _PROBLEM,
        order,
        parent_id=parent_id,
        source=str(problem.path),
        reason=problem.reason,
        line=-1 if problem.line is None else problem.line,
    )


class _Encode:
    """An actor holding one [`M3Encoder`][m3rag.M3Encoder]: chunk rows gain their embeddings."""

    def __init__(
        self,
        model: str,
        heads: tuple[Head, ...],
        device: str | None,
        dtype: str | None,
        batch_size: int,
    ) -> None:
        from m3rag.encoder import M3Encoder

        self.encoder = M3Encoder(model, device=device, dtype=dtype, batch_size=batch_size)
        self.flags = {h: (h in heads) for h in HEADS}

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        kinds = batch.column("kind").to_pylist()
        texts = batch.column("text").to_pylist()
        at = [i for i, k in enumerate(kinds) if k == _CHUNK]
        n = batch.num_rows
        empty = b""
        dense, sp_ids, sp_w, colbert = [empty] * n, [empty] * n, [empty] * n, [empty] * n
        counts, truncated, width = [0] * n, [False] * n, [0] * n
        if at:
            out = self.encoder.encode_corpus(
                [texts[i] for i in at],
                dense=self.flags["dense"],
                sparse=self.flags["sparse"],
                colbert=self.flags["colbert"],
            )
            for j, i in enumerate(at):
                if out.dense_vecs is not None:
                    dense[i] = out.dense_vecs[j].astype(np.float32).tobytes()
                if out.lexical_weights is not None:
                    weights = out.lexical_weights[j]
                    sp_ids[i] = np.fromiter(weights.keys(), np.int64, len(weights)).tobytes()
                    sp_w[i] = np.fromiter(weights.values(), np.float32, len(weights)).tobytes()
                if out.colbert_vecs is not None:
                    matrix = np.ascontiguousarray(out.colbert_vecs[j], np.float32)
                    colbert[i], width[i] = matrix.tobytes(), int(matrix.shape[1])
                counts[i] = int(out.token_counts[j])
                truncated[i] = bool(out.truncated[j])
        for name, values, kind in (
            ("dense", dense, pa.binary()),
            ("sparse_ids", sp_ids, pa.binary()),
            ("sparse_weights", sp_w, pa.binary()),
            ("colbert", colbert, pa.binary()),
            ("colbert_dim", width, pa.int64()),
            ("token_count", counts, pa.int64()),
            ("truncated", truncated, pa.bool_()),
        ):
            batch = batch.append_column(name, pa.array(values, type=kind))
        return batch


# -- the driver ---------------------------------------------------------------------------------


def _embeddings(rows: Sequence[Mapping[str, Any]], heads: tuple[Head, ...]) -> M3Output:
    """The M3Output of encoded chunk rows, from the bytes `_Encode` wrote."""
    dense = lexical = colbert = None
    if "dense" in heads:
        dense = np.stack([np.frombuffer(r["dense"], np.float32) for r in rows])
    if "sparse" in heads:
        lexical = [
            dict(
                zip(
                    np.frombuffer(r["sparse_ids"], np.int64).tolist(),
                    np.frombuffer(r["sparse_weights"], np.float32).tolist(),
                    strict=True,
                )
            )
            for r in rows
        ]
    if "colbert" in heads:  # flat bytes: give each matrix its [t, d] shape back
        colbert = [
            np.frombuffer(r["colbert"], np.float32).reshape(-1, max(1, int(r["colbert_dim"])))
            for r in rows
        ]
    return M3Output.build(
        dense_vecs=dense,
        lexical_weights=lexical,
        colbert_vecs=colbert,
        token_counts=[int(r["token_count"]) for r in rows],
        truncated=[bool(r["truncated"]) for r in rows],
    )


@dataclass
class _Event:
    """A finished document: its chunk rows, or that it was skipped, or a problem."""

    kind: str
    parent_id: str
    source: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    problem: Problem | None = None


def _events(rows: Iterator[dict[str, Any]]) -> Iterator[_Event]:
    """Group the pipeline's rows into whole documents, in the order they complete."""
    pending: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        kind = row["kind"]
        if kind == _PROBLEM:
            line = int(row["line"])
            problem = Problem(Path(row["source"]), row["reason"], None if line < 0 else line)
            yield _Event(_PROBLEM, row["parent_id"], row["source"], problem=problem)
        elif kind == _SKIPPED:
            yield _Event(_SKIPPED, row["parent_id"], row["source"])
        else:
            # a repeated id reads its chunks under the same ids: keep the copies apart by sha
            key = f"{row['parent_id']}\x00{row['doc_sha256']}\x00{row['order']}"
            group = pending.setdefault(key, [])
            group.append(row)
            if len(group) == int(row["n_chunks"]):
                del pending[key]
                yield _Event(_CHUNK, row["parent_id"], row["source"], rows=group)


@contextmanager
def _ray_session(address: str | None, init: Mapping[str, Any] | None) -> Iterator[Any]:
    """Ray, connected: the running session if there is one, else one m3rag starts and stops."""
    ray = require("ray", extra="ray", purpose="m3rag.distributed")
    require("ray.data", extra="ray", purpose="m3rag.distributed")
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    kwargs.update(init or {})
    target = None if address in (None, "", "local") else address
    try:
        ray.init(address=target, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = "a local Ray cluster" if target is None else f"the Ray cluster at {target!r}"
        msg = f"cannot start or reach {where} ({type(exc).__name__}: {exc})"
        raise DistributedError(msg) from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_sizes(**values: int | None) -> None:
    for name, value in values.items():
        if value is None:
            continue
        check_positive_int(value, name)


@dataclass(frozen=True)
class _Plan:
    """What the pipeline reads with and encodes with (one value for its two stages)."""

    model: str
    heads: tuple[Head, ...]
    skip: Collection[str]
    chunk_tokens: int
    overlap: int | None
    batch_size: int
    actors: int | None
    device: str | None
    dtype: str | None


def _pipeline(
    ray: Any, files: Sequence[tuple[Path, Path]], plan: _Plan
) -> Iterator[dict[str, Any]]:
    """The rows of the streaming pipeline, in file order."""
    import ray.data

    # A dataset copies the context when it is made: set it first, restore it when done. The
    # same order as a single process gives the same "first" of a repeated id; progress is
    # the caller's (on_progress), not Ray's bars.
    ctx = ray.data.DataContext.get_current()
    before = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
    try:
        ds = _dataset(ray, files, plan)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield from batch.to_pylist()
    except ray.exceptions.RayError as exc:
        msg = f"the Ray pipeline failed: {exc}"
        raise DistributedError(msg) from exc
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = before


def _dataset(ray: Any, files: Sequence[tuple[Path, Path]], plan: _Plan) -> Any:
    """Files -> read and chunk (tasks) -> encode (an actor pool)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    actors = plan.actors or gpus or max(1, int(resources.get("CPU", 1)) // 2)
    skip_ref = ray.put(frozenset(plan.skip))
    items = [{"path": str(p), "root": str(r), "order": i} for i, (p, r) in enumerate(files)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 1024)))
    ds = ds.map_batches(
        _read_and_chunk,
        batch_size=1,
        batch_format="pyarrow",
        # a task per file, apart from the encoders (other resources: Ray does not fuse them)
        num_cpus=0.5,
        fn_kwargs={
            "model": plan.model,
            "chunk_tokens": plan.chunk_tokens,
            "overlap": plan.overlap,
            "skip": skip_ref,
        },
    )
    if plan.heads:
        use_gpu = gpus > 0 and (plan.device is None or plan.device.startswith("cuda"))
        ds = ds.map_batches(
            _Encode,
            fn_constructor_kwargs={
                "model": plan.model,
                "heads": plan.heads,
                "device": plan.device,
                "dtype": plan.dtype,
                "batch_size": plan.batch_size,
            },
            batch_size=plan.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if use_gpu else 0,
            num_cpus=0 if use_gpu else 1,
        )
    return ds


def encode_with_ray(
    paths: Sequence[str | Path],
    *,
    model_name_or_path: str,
    heads: Sequence[Head] = HEADS,
    skip_sha256: Collection[str] = (),
    chunk_tokens: int = 512,
    overlap: int | None = None,
    batch_size: int = 64,
    actors: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    address: str | None = None,
    ray_init: Mapping[str, Any] | None = None,
    on_problem: Callable[[Problem], None] | None = None,
) -> Iterator[EncodedBatch]:
    """Read, chunk and encode files on a Ray cluster; yield shards of whole documents.

    Each shard is ready for ``collection.add(shard.documents, embeddings=shard.embeddings)``;
    chunks and metadata are those `m3rag.index_files` would index. Documents are yielded in
    file order, at most ``batch_size`` chunks a shard (a longer document is one shard of its own).

    Args:
        paths: Files and folders (``.txt .md .html .pdf .jsonl .parquet``).
        model_name_or_path: The encoder checkpoint, readable on every node.
        heads: The heads to compute.
        skip_sha256: ``doc_sha256`` values of documents not to encode (already indexed).
        chunk_tokens: Chunk size in tokens, specials included (capped at the model's maximum).
        overlap: Tokens shared by consecutive chunks (default: an eighth of the chunk).
        batch_size: Chunks per encoder call.
        actors: Encoder actors (default: one per GPU, else half the cluster's CPUs).
        device: The actors' device (default: CUDA on GPU clusters, else CPU).
        dtype: The actors' compute dtype (default: fp16 on CUDA, fp32 on CPU).
        address: ``None`` (the running Ray session, else a new local cluster), ``"auto"``, a
            ``ray://HOST:PORT`` or ``HOST:PORT`` address.
        ray_init: Extra ``ray.init`` arguments, when m3rag starts or connects to Ray.
        on_problem: Called with each `Problem` (unreadable file, bad record, repeated id).

    Yields:
        `EncodedBatch` shards.

    Raises:
        MissingDependencyError: Ray is not installed (``pip install "m3rag[ray]"``).
        DistributedError: The cluster cannot be started or reached.
        ValueError: Bad sizes or heads (before anything runs).
    """
    chosen = tuple(h for h in HEADS if h in set(heads))
    if not chosen or len(chosen) != len(set(heads)):
        msg = f"heads must be a non-empty subset of {list(HEADS)}, got {list(heads)!r}"
        raise ValueError(msg)
    _check_sizes(batch_size=batch_size, actors=actors)
    files, missing = _files(paths)
    report = on_problem or (lambda _p: None)
    for problem in missing:
        report(problem)
    if not files:
        return
    with _ray_session(address, ray_init) as ray:
        plan = _Plan(
            model_name_or_path,
            chosen,
            skip_sha256,
            chunk_tokens,
            overlap,
            batch_size,
            actors,
            device,
            dtype,
        )
        rows = _pipeline(ray, files, plan)
        seen: dict[str, str] = {}  # id -> where it was read
        shard: list[dict[str, Any]] = []
        for event in _events(rows):
            if event.problem is not None:
                report(event.problem)
                continue
            if event.parent_id in seen:
                report(_repeat(event, seen[event.parent_id]))
                continue
            seen[event.parent_id] = event.source
            if event.kind == _CHUNK:
                if shard and len(shard) + len(event.rows) > batch_size:
                    yield _shard(shard, chosen)
                    shard = []
                shard.extend(event.rows)
        if shard:
            yield _shard(shard, chosen)


def _repeat(event: _Event, where: str) -> Problem:
    return Problem(
        Path(event.source), f"the id {event.parent_id!r} repeats (first read in {where})"
    )


def _documents(rows: Sequence[Mapping[str, Any]]) -> list[Document]:
    return [Document(r["text"], r["id"], json.loads(r["metadata"])) for r in rows]


def _shard(rows: Sequence[Mapping[str, Any]], heads: tuple[Head, ...]) -> EncodedBatch:
    return EncodedBatch(_documents(rows), _embeddings(rows, heads))


def _files(paths: Sequence[str | Path]) -> tuple[list[tuple[Path, Path]], list[Problem]]:
    return discover(input_paths(paths))


def index_with_ray(
    store: WritableStore,
    paths: Sequence[str | Path],
    *,
    model_name_or_path: str | None = None,
    chunk_tokens: int = 512,
    overlap: int | None = None,
    batch_size: int = 64,
    commit_every: int = 32,
    actors: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    address: str | None = None,
    ray_init: Mapping[str, Any] | None = None,
    on_progress: Callable[[IndexProgress], None] | None = None,
    on_problem: Callable[[Problem], None] | None = None,
) -> IndexReport:
    """Index files and folders into ``store`` on a Ray cluster, as `m3rag.index_files` does.

    Same documents, chunk ids, metadata and (within float tolerance) embeddings as
    `m3rag.index_files`; documents whose ``doc_sha256`` the store holds are skipped before
    they are chunked; a changed document's old chunks are replaced; writes are upserts of
    whole documents, committed every ``commit_every`` documents and at the end.

    Args:
        store: Any [`WritableStore`][m3rag.index.protocol.WritableStore] (a
            [`Collection`][m3rag.Collection], a vector database store).
        paths: Files and folders (``.txt .md .html .pdf .jsonl .parquet``).
        model_name_or_path: The encoder checkpoint, readable on every node (default: the
            store's encoder's).
        chunk_tokens: Chunk size in tokens, specials included (capped at the model's maximum).
        overlap: Tokens shared by consecutive chunks (default: an eighth of the chunk).
        batch_size: Chunks per encoder call.
        commit_every: Documents per commit.
        actors: Encoder actors (default: one per GPU, else half the cluster's CPUs).
        device: The actors' device (default: CUDA on GPU clusters, else CPU).
        dtype: The actors' compute dtype.
        address: ``None`` (the running Ray session, else a new local cluster), ``"auto"``, a
            ``ray://HOST:PORT`` or ``HOST:PORT`` address.
        ray_init: Extra ``ray.init`` arguments, when m3rag starts or connects to Ray.
        on_progress: Called after each document with an `IndexProgress`.
        on_problem: Called with each `Problem` as it is found.

    Returns:
        An [`IndexReport`][m3rag.IndexReport].

    Raises:
        MissingDependencyError: Ray is not installed (``pip install "m3rag[ray]"``).
        DistributedError: The cluster cannot be started or reached.
        ValueError: Bad sizes, or no model to encode with (before anything runs).
        m3rag.CollectionError: The store cannot be written; what was committed stays.

    Example:
        ```python
        from m3rag.distributed import index_with_ray

        report = index_with_ray(collection, ["docs/"], address="auto")
        ```
    """
    _check_sizes(batch_size=batch_size, commit_every=commit_every, actors=actors)
    model = model_name_or_path or getattr(store.encoder, "model_name_or_path", None)
    if not model:
        msg = "index_with_ray needs model_name_or_path= (the store has no encoder to name one)"
        raise ValueError(msg)
    files, missing = _files(paths)
    writer = _Writer(store, commit_every, on_problem)
    for problem in missing:
        writer.problem(problem)
    if not files:
        return writer.report()
    total = count_documents(files)
    with _ray_session(address, ray_init) as ray:
        plan = _Plan(
            str(model),
            tuple(store.heads),
            writer.indexed_shas,
            chunk_tokens,
            overlap,
            batch_size,
            actors,
            device,
            dtype,
        )
        rows = _pipeline(ray, files, plan)
        for done, event in enumerate(_events(rows), 1):
            writer.event(event)
            if on_progress is not None:
                on_progress(IndexProgress(done, max(total, done), writer.chunks, event.source))
    writer.flush()
    store.commit()
    return writer.report()


class _Writer:
    """The driver's side of `index_with_ray`: what is counted, buffered and committed."""

    def __init__(
        self,
        store: WritableStore,
        commit_every: int,
        on_problem: Callable[[Problem], None] | None,
    ) -> None:
        self.store = store
        self.commit_every = commit_every
        self.on_problem = on_problem
        self.heads = tuple(store.heads)
        self.indexed_shas = {str(v) for v in store.metadata_values(CONTENT_SHA)}
        self.known_parents = {str(v) for v in store.metadata_values(PARENT_ID)}
        self.seen: dict[str, str] = {}  # id -> where it was read, in this run
        self.buffer: list[_Event] = []
        self.problems: list[Problem] = []
        self.documents = self.chunks = self.skipped = self.replaced = 0
        self.since_commit = 0

    def problem(self, problem: Problem) -> None:
        self.problems.append(problem)
        if self.on_problem is not None:
            self.on_problem(problem)

    def report(self) -> IndexReport:
        return IndexReport(
            self.documents, self.chunks, self.skipped, self.replaced, tuple(self.problems)
        )

    def event(self, event: _Event) -> None:
        if event.problem is not None:
            self.problem(event.problem)
            return
        if event.parent_id in self.seen:
            self.problem(_repeat(event, self.seen[event.parent_id]))
            return
        self.seen[event.parent_id] = event.source
        sha = str(event.rows[0]["doc_sha256"]) if event.rows else ""
        if event.kind == _SKIPPED or sha in self.indexed_shas:
            self.skipped += 1
            return
        self.buffer.append(event)
        self.indexed_shas.add(sha)
        self.documents += 1
        self.chunks += len(event.rows)
        self.since_commit += 1
        if sum(len(e.rows) for e in self.buffer) >= _UPSERT_ROWS:
            self.flush()
        if self.since_commit >= self.commit_every:
            self.flush()
            self.store.commit()
            self.since_commit = 0

    def flush(self) -> None:
        """Upsert the buffered documents; one the store refuses is reported, not fatal."""
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        try:
            self._write(batch)
        except (M3RagError, ValueError, TypeError):
            pass  # a failed write stages nothing: retry document by document, below
        else:
            return
        for event in batch:
            try:
                self._write([event])
            except (M3RagError, ValueError, TypeError) as exc:
                self.problem(Problem(Path(event.source), f"{event.parent_id}: not indexed ({exc})"))
                self.documents -= 1
                self.chunks -= len(event.rows)

    def _write(self, batch: Sequence[_Event]) -> None:
        rows = [r for e in batch for r in e.rows]
        docs = _documents(rows)
        new_ids = {d.id for d in docs}
        stale: list[str] = []
        replaced = 0
        for event in batch:
            if event.parent_id in self.known_parents:  # content changed: replace the old chunks
                old = self.store.ids_matching({PARENT_ID: event.parent_id})
                stale.extend(i for i in old if i not in new_ids)
                replaced += 1
        embeddings = _embeddings(rows, self.heads) if self.heads else None
        self.store.upsert(docs, embeddings=embeddings)  # a refused write stages nothing
        if stale:
            self.store.delete(stale)
        self.known_parents.update(e.parent_id for e in batch)
        self.replaced += replaced
