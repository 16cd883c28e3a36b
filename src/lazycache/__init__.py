"""lazycache: a write-behind cache that is nearly as fast as a dict.

The compiled core is used when it is importable and LAZYCACHE_NO_EXTENSIONS is not
set (`lazycache._compat` decides); `IMPLEMENTATION` says which core is active ("cython"
or "python").
"""

from ._compat import IMPLEMENTATION
from ._open import open, open_redis
from ._sentinels import MISSING
from .cache import LazyWriterCache, implementation_class
from .memoize import cached, hashkey, typedkey
from .serializers import SerializationError
from .stats import CacheStats
from .stores import GeneratedFields, MemoryStore, Store
from .writer import BackpressureError, FlushError, FlushResult, log_write_error, merge_fields

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATION",
    "MISSING",
    "BackpressureError",
    "CacheStats",
    "FlushError",
    "FlushResult",
    "GeneratedFields",
    "LazyWriterCache",
    "MemoryStore",
    "SerializationError",
    "Store",
    "cached",
    "hashkey",
    "implementation_class",
    "log_write_error",
    "merge_fields",
    "open",
    "open_redis",
    "typedkey",
]
