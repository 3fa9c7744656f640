"""Sizes the system reports in /proc (Linux): the process's resident memory, the memory available."""
from __future__ import annotations


def status_bytes(key: str, path: str = "/proc/self/status") -> int | None:
    """The ``key: N kB`` line of ``path`` in bytes (VmRSS, VmHWM of /proc/self/status; MemAvailable of
    /proc/meminfo); None where the system has no such file or line."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
