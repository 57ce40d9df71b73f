"""The translation cache (off by default, as LibreTranslate's ``--translation-cache``): segment translations kept
in a least-recently-used map bounded by bytes, so the same sentence asked again is answered without an engine.

Key: (the specialist's identity, source, target, the prompt the engine reads, the generation parameters). The
identity (``engines.base.identity``) names what the engine serves, computed at each start: a specialist replaced on disk
(re-materialised, its plan's view rebuilt) or restarted from a hub id or a remote server gets a new identity,
so its old answers are never read again (they are the least recent, the first evicted). Only answers that are
the same every time are kept: greedy decoding, or sampling with a seed.

``cachetools.LRUCache`` (maintained, size-bounded with ``getsizeof``) holds the entries; this module adds the
key, the byte count of an entry and the Prometheus counters."""

from __future__ import annotations

from dataclasses import dataclass

from cachetools import LRUCache

from moe_specialists.service.engines.base import Generation, GenerationParams
from moe_specialists.service.metrics import GatewayMetrics

ENTRY_OVERHEAD = 200  # bytes an entry costs beyond its texts: the key tuple, the Generation, the map's slot

Key = tuple[str, str, str, str, GenerationParams]


def cacheable(params: GenerationParams) -> bool:
    """Whether a generation with ``params`` is the same every time: greedy, or sampled with a seed."""
    return params.temperature == 0 or params.seed is not None


def entry_bytes(key: Key, generation: Generation) -> int:
    """Bytes an entry is counted as: its prompt and output in UTF-8 plus ``ENTRY_OVERHEAD``."""
    return len(key[3].encode()) + len(generation.text.encode()) + ENTRY_OVERHEAD


@dataclass(frozen=True)
class _Entry:
    generation: Generation
    size: int


class _Evicting(LRUCache):
    """An ``LRUCache`` that counts what it evicts to make room."""

    def __init__(self, maxsize: int, on_evict):
        super().__init__(maxsize, getsizeof=lambda entry: entry.size)
        self._on_evict = on_evict

    def popitem(self):
        key, entry = super().popitem()
        self._on_evict(entry)
        return key, entry


class TranslationCache:
    """At most ``max_bytes`` of segment translations (``entry_bytes`` each); hits, misses, evictions and size in
    ``moe_gateway_translation_cache_*``. An entry larger than the whole cache is not kept."""

    def __init__(self, max_bytes: int, metrics: GatewayMetrics):
        if max_bytes < 1:
            raise ValueError(f"a translation cache needs at least 1 byte, got {max_bytes}")
        self.metrics = metrics
        self._entries = _Evicting(max_bytes, self._evicted)
        metrics.cache_capacity.set(max_bytes)

    def _evicted(self, entry: _Entry) -> None:
        self.metrics.cache_evictions.inc()

    def _sized(self) -> None:
        self.metrics.cache_bytes.set(self._entries.currsize)
        self.metrics.cache_entries.set(len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._entries.currsize

    def get(self, key: Key, specialist: str) -> Generation | None:
        entry = self._entries.get(key)
        (self.metrics.cache_hits if entry is not None else self.metrics.cache_misses).labels(specialist).inc()
        return None if entry is None else entry.generation

    def put(self, key: Key, generation: Generation) -> None:
        size = entry_bytes(key, generation)
        if size <= self._entries.maxsize:
            self._entries[key] = _Entry(generation, size)
            self._sized()
