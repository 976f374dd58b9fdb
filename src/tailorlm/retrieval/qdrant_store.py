"""The optional second store: Qdrant through `qdrant-client` (pip install 'tailorlm[qdrant]').

Its embedded local mode (used here) keeps points in a folder; a Qdrant server takes the same calls when a corpus
outgrows one machine. Local mode has no versions, so writes are copy-on-write: a run copies the current
`qdrant-N` folder to `qdrant-N+1`, changes the copy, and the manifest switches to it at the end.
"""

from __future__ import annotations

import atexit
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailorlm.errors import ConfigError, DataError
from tailorlm.retrieval.chunking import Chunk
from tailorlm.retrieval.store import Hit, VectorStore, _all_found, check_vectors, chunk_row, filter_tags, row_chunk

COLLECTION = "chunks"
_BATCH = 500
# Local mode locks its folder against a second client, even in the same process: stores of one folder share one.
_CLIENTS: dict[str, list[Any]] = {}  # resolved folder -> [client, number of open stores]


@atexit.register
def _close_clients() -> None:
    """Close clients still open at exit while Python can still run their clean-up (it fails during shutdown)."""
    for client, _ in list(_CLIENTS.values()):
        client.close()
    _CLIENTS.clear()


def _client_module() -> Any:
    """qdrant_client, or ConfigError saying how to install it."""
    try:
        import qdrant_client
    except ImportError:
        raise ConfigError("the qdrant backend needs qdrant-client", key="backend", found="'qdrant'",
                          hint="pip install 'tailorlm[qdrant]', or use the default backend 'lance'") from None
    return qdrant_client


def point_id(chunk_id: str) -> str:
    """Qdrant wants unsigned integers or UUIDs as point ids: a UUID derived from the chunk id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, chunk_id))


class QdrantStore(VectorStore):
    """A Qdrant collection in local (embedded) mode inside `folder`."""

    backend = "qdrant"

    def __init__(self, folder: str | Path, *, dimension: int | None = None) -> None:
        self.folder = Path(folder)
        self.dimension = dimension
        self._models = _client_module().models
        self._key = str(self.folder.resolve())
        shared = _CLIENTS.get(self._key)
        if shared is None:
            shared = _CLIENTS[self._key] = [_client_module().QdrantClient(path=str(self.folder)), 0]
        shared[1] += 1
        self._client = shared[0]
        self._closed = False
        self._exists = self._client.collection_exists(COLLECTION)

    @classmethod
    def at_state(cls, index_dir: str | Path, state: Mapping[str, Any], *, dimension: int | None = None,
                 writable: bool = False) -> "QdrantStore":
        """The store the manifest names; writable: a fresh copy of it in the next `qdrant-N` folder."""
        index_dir = Path(index_dir)
        current = state.get("path")
        if not writable:
            if not current or not (index_dir / current).is_dir():
                raise DataError("the index has no Qdrant data", where=str(index_dir), expected=f"a folder {current!r}",
                                hint="Index the documents again")
            return cls(index_dir / current, dimension=dimension)
        taken = [int(p.name.split("-")[1]) for p in index_dir.glob("qdrant-*") if p.name.split("-")[1].isdigit()]
        target = index_dir / f"qdrant-{max(taken, default=0) + 1}"
        shutil.rmtree(target, ignore_errors=True)
        if current:
            shutil.copytree(index_dir / current, target, ignore=shutil.ignore_patterns(".lock"))
        return cls(target, dimension=dimension)

    def add(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Upsert the chunks as points with their columns as payload."""
        if not chunks:
            return
        vectors = check_vectors(chunks, vectors, self.dimension)
        if not self._exists:
            params = self._models.VectorParams(size=vectors.shape[1], distance=self._models.Distance.DOT)
            self._client.create_collection(COLLECTION, vectors_config=params)
            self._exists = True
        for i in range(0, len(chunks), _BATCH):
            part = chunks[i:i + _BATCH]
            batch = self._models.Batch(ids=[point_id(c.chunk_id) for c in part], vectors=vectors[i:i + _BATCH].tolist(),
                                       payloads=[chunk_row(c) for c in part])
            self._client.upsert(COLLECTION, points=batch)

    def delete_docs(self, doc_ids: Iterable[str]) -> None:
        """Delete the points of these documents."""
        doc_ids = list(doc_ids)
        if not self._exists:
            return
        for i in range(0, len(doc_ids), _BATCH):
            condition = self._models.FieldCondition(key="doc_id", match=self._models.MatchAny(any=doc_ids[i:i + _BATCH]))
            self._client.delete(COLLECTION, points_selector=self._models.FilterSelector(
                filter=self._models.Filter(must=[condition])))

    def search(self, vector: np.ndarray, k: int, filters: Mapping[str, Any] | None = None) -> list[Hit]:
        """Dot-product search among points carrying every filter tag."""
        if not self._exists or k <= 0:
            return []
        result = self._client.query_points(COLLECTION, query=np.asarray(vector, dtype=np.float32).tolist(), limit=k,
                                           query_filter=self._filter(filters), with_payload=True)
        return [Hit(point.payload["chunk_id"], float(point.score), row_chunk(point.payload)) for point in result.points]

    def all_chunks(self, filters: Mapping[str, Any] | None = None) -> Iterator[Chunk]:
        """Every chunk (matching `filters`), page by page."""
        if not self._exists:
            return
        offset = None
        while True:
            points, offset = self._client.scroll(COLLECTION, scroll_filter=self._filter(filters), limit=1024,
                                                 offset=offset, with_payload=True)
            yield from (row_chunk(point.payload) for point in points)
            if offset is None:
                return

    def count(self) -> int:
        """The number of points."""
        return self._client.count(COLLECTION, exact=True).count if self._exists else 0

    def get(self, chunk_ids: Sequence[str]) -> list[Chunk]:
        """These chunks, in the order asked."""
        points = self._points(chunk_ids, vectors=False)
        return [row_chunk(points[cid].payload) for cid in chunk_ids]

    def vectors(self, chunk_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors, in the order asked."""
        points = self._points(chunk_ids, vectors=True)
        return np.array([points[cid].vector for cid in chunk_ids], dtype=np.float32).reshape(len(chunk_ids), -1)

    def state(self) -> dict[str, Any]:
        """The folder (inside the index) holding this copy."""
        return {"path": self.folder.name}

    def close(self) -> None:
        """Let go of the shared client; the last store of a folder closes it, releasing the folder's lock."""
        if self._closed:
            return
        self._closed = True
        shared = _CLIENTS[self._key]
        shared[1] -= 1
        if shared[1] == 0:
            del _CLIENTS[self._key]
            self._client.close()

    def _points(self, chunk_ids: Sequence[str], *, vectors: bool) -> dict[str, Any]:
        """Points by chunk id; DataError when one is missing."""
        found: dict[str, Any] = {}
        for i in range(0, len(chunk_ids), _BATCH):
            if not self._exists:
                break
            ids = [point_id(cid) for cid in chunk_ids[i:i + _BATCH]]
            for point in self._client.retrieve(COLLECTION, ids=ids, with_payload=True, with_vectors=vectors):
                found[point.payload["chunk_id"]] = point
        return _all_found(found, chunk_ids)

    def _filter(self, filters: Mapping[str, Any] | None) -> Any:
        """A Qdrant filter: the payload's tags hold every filter tag."""
        if not filters:
            return None
        return self._models.Filter(must=[self._models.FieldCondition(key="tags", match=self._models.MatchValue(value=tag))
                                         for tag in filter_tags(filters)])
