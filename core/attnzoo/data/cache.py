"""The decode cache: image folders decoded once, kept as safetensors for the next run.

Where: ``$ATTNZOO_CACHE_DIR``, else ``~/.cache/attnzoo``. What: one
``imagefolder-<key>.safetensors`` per (folder, files used, image size), uint8 images and labels,
about 3 KB per 32x32 image. Bounded: after each write the oldest entries (by last use) are
removed until the folder holds at most ``$ATTNZOO_CACHE_MAX_GB`` (default 5) GB. attnzoo only
ever deletes files it named itself (``imagefolder-*``); ``attnzoo cache clear`` empties it.
"""

from __future__ import annotations

import os
from pathlib import Path

PATTERN = "imagefolder-*"  # every file the cache writes matches this, temporaries included
DEFAULT_MAX_GB = 5.0


def cache_dir() -> Path:
    return Path(os.environ.get("ATTNZOO_CACHE_DIR", Path.home() / ".cache" / "attnzoo"))


def max_bytes() -> int:
    raw = os.environ.get("ATTNZOO_CACHE_MAX_GB", "")
    try:
        gigabytes = float(raw) if raw.strip() else DEFAULT_MAX_GB
    except ValueError:
        gigabytes = DEFAULT_MAX_GB  # a typo in the limit must not stop a run: the cache only saves time
    return int(max(gigabytes, 0.0) * 1e9)


def entries(folder: Path | None = None) -> list[Path]:
    """The cache's files, least recently used first."""
    folder = cache_dir() if folder is None else folder
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob(PATTERN) if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_mtime_ns)


def touch(path: Path) -> None:
    """Mark an entry as just used, so pruning keeps it longest."""
    try:
        os.utime(path)
    except OSError:
        pass


def prune(keep: Path | None = None, limit: int | None = None) -> list[Path]:
    """Remove the least recently used entries until the cache fits `limit` bytes; `keep` stays."""
    limit = max_bytes() if limit is None else limit
    files = entries(keep.parent if keep is not None else None)
    total = sum(p.stat().st_size for p in files)
    removed = []
    for path in files:
        if total <= limit:
            break
        if keep is not None and path == keep:
            continue
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        total -= size
        removed.append(path)
    return removed


def clear() -> tuple[int, int]:
    """Delete every cache entry; returns (files, bytes) removed."""
    files = entries()
    total = sum(p.stat().st_size for p in files)
    for path in files:
        path.unlink(missing_ok=True)
    return len(files), total


def usage() -> tuple[int, int]:
    files = entries()
    return len(files), sum(p.stat().st_size for p in files)
