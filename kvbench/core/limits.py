"""The limits this process runs under, and the words for a failure they caused: memory it could not have (a
MemoryError, an out-of-memory error from the system), or a library it could not map into an address space
kept too small (`ulimit -v`)."""

from __future__ import annotations

import errno

# Imported now, while there is memory: asked for after a MemoryError, its own import could fail too.
try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

from kvbench.core.errors import KvbenchError
from kvbench.core.units import format_bytes

# How the dynamic loader says a library did not fit in the address space (glibc's words).
_UNMAPPABLE = ("failed to map segment from shared object", "cannot map zero-fill pages", "cannot allocate memory")


def out_of_memory(error: BaseException) -> KvbenchError | None:
    """The one line for a failure that the process's memory caused, naming its limit where one is set;
    None for any other error, which stays what it is."""
    if isinstance(error, ImportError) and any(words in str(error).lower() for words in _UNMAPPABLE):
        what, short_of = f"a library kvbench needs could not be loaded ({error})", "too little to map it"
    elif isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno == errno.ENOMEM):
        detail = f" ({error})" if isinstance(error, OSError) else ""
        what, short_of = f"kvbench ran out of memory{detail}", "too little for what it was doing"
    else:
        return None
    limit = address_space_limit()
    if limit is None:
        return KvbenchError(f"{what}: the machine had too little free memory; free some, or use a machine with more")
    return KvbenchError(
        f"{what}: this process may use at most {format_bytes(limit)} of address space (ulimit -v"
        f" {limit // 1024}), {short_of}; raise the limit (ulimit -v unlimited)"
    )


def address_space_limit() -> int | None:
    """The bytes of address space this process may map (`ulimit -v`), or None where there is no limit."""
    if resource is None:  # pragma: no cover - not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft
