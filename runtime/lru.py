"""An LRU bounded by entry count and by measured memory (plain logic, no threads)."""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["LruCache", "deep_size"]


def deep_size(obj: Any, _seen: set[int] | None = None) -> int:
    """Bytes taken by ``obj`` and everything it holds, each object counted once.

    Shared immutable singletons (small ints, interned names) count too: this is what
    the entry keeps alive, an upper bound of what evicting it would free.
    """
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return size
    if isinstance(obj, Mapping):
        return size + sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return size + sum(deep_size(item, seen) for item in obj)
    for cls in type(obj).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if hasattr(obj, slot):
                size += deep_size(getattr(obj, slot), seen)
    if hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen)
    return size


class LruCache:
    """Least-recently-used map, bounded by ``max_entries`` and ``max_bytes``.

    An entry larger than ``max_bytes`` on its own is not kept at all.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def get(self, key: str) -> Any | None:
        """The value, marked most recently used; ``None`` on a miss."""
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def touch(self, key: str) -> None:
        if key in self._items:
            self._items.move_to_end(key)

    def put(self, key: str, value: Any) -> list[str]:
        """Insert or replace ``key``; returns the keys evicted to make room."""
        self.pop(key)
        if self.max_entries == 0:  # caching switched off: nothing is kept, nothing evicted
            return []
        size = deep_size(value) + deep_size(key)
        if size > self.max_bytes:
            return []
        self._items[key] = (value, size)
        self.bytes += size
        evicted = []
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            old, (_, old_size) = self._items.popitem(last=False)
            self.bytes -= old_size
            self.evictions += 1
            evicted.append(old)
        return evicted

    def pop(self, key: str) -> Any | None:
        item = self._items.pop(key, None)
        if item is None:
            return None
        self.bytes -= item[1]
        return item[0]

    def snapshot(self) -> dict[str, Any]:
        """A fresh dict of every entry (for publication as an immutable view)."""
        return {key: value for key, (value, _) in self._items.items()}
