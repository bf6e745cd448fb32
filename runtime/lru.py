"""A bounded mapping that forgets its least recently used entry.

For the process-wide caches of compiled artifacts and executables: as plain dicts they keep
every step a process ever compiled -- object code, constants, IR texts and, for executables,
the native code and the arena of intermediates -- until the process exits. Evicting an entry
frees nothing anyone still holds (a CompiledStep keeps its own artifact and executable); it
only means a later identical trace is rebuilt (or loaded from the disk cache) instead of
found in memory."""
import threading
from collections import OrderedDict


class LRU:
    """At most `maxsize` entries. `get`, `setdefault` and setting an item make the entry the
    most recently used; adding one to a full mapping drops the least recently used.
    `in` does not count as a use. Every operation holds a lock, so threads sharing a cache
    (gf.gradient may be called from several) never see it half-updated."""

    def __init__(self, maxsize):
        if int(maxsize) < 1:
            raise ValueError(f"LRU maxsize must be at least 1, got {maxsize!r}")
        self.maxsize = int(maxsize)
        self._data = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self._data:
                return default
            self._data.move_to_end(key)
            return self._data[key]

    def __setitem__(self, key, value):
        with self._lock:
            self._put(key, value)

    def setdefault(self, key, value):
        """The value stored for `key`, storing `value` first if there is none: of two threads
        racing to fill one key, both get the value the first one stored."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            self._put(key, value)
            return value

    def _put(self, key, value):
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __contains__(self, key):
        with self._lock:
            return key in self._data

    def __len__(self):
        return len(self._data)

    def clear(self):
        with self._lock:
            self._data.clear()
