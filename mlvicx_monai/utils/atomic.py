"""Atomic file writes: a reader (or a rerun after SIGKILL) sees the old file or the new one, never half.

Every writer goes through a temporary file in the same folder, then ``os.replace``. Temporary names
start with ``.`` and end with :data:`TMP_SUFFIX`, so :func:`remove_stale_temporaries` can clean what a
killed process left behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "TMP_SUFFIX",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "remove_stale_temporaries",
]

TMP_SUFFIX = ".partial"


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], fsync: bool = False) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file onto ``path``.

    Args:
        path: destination; its folder is created if needed.
        write: writes the complete content to the temporary path it is given.
        fsync: flush to the device before the rename (for small, precious files such as checkpoints
            and manifests; not needed to survive a killed process, only a power loss).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(target)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def atomic_write_json(path: str | os.PathLike, obj: Any, fsync: bool = False, indent: int | None = 1) -> Path:
    """Atomically write ``obj`` as JSON (UTF-8, keys in insertion order, newline at the end)."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync=fsync)


def atomic_write_csv(
    path: str | os.PathLike, rows: Iterable[Mapping[str, Any] | Sequence[Any]], header: Sequence[str] | None = None
) -> Path:
    """Atomically write a UTF-8 CSV (``\n`` line ends). ``rows`` are mappings (columns: ``header``, else every key
    in first-seen order) or sequences (``header`` is then the first line, if given)."""
    rows = list(rows)
    buffer = io.StringIO()
    if rows and isinstance(rows[0], Mapping) or (not rows and header is None):
        columns = list(header or [])
        if header is None:
            for row in rows:
                columns.extend(k for k in row if k not in columns)
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        plain = csv.writer(buffer, lineterminator="\n")
        if header is not None:
            plain.writerow(header)
        plain.writerows(rows)
    text = buffer.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporaries left by killed writers under ``folder``; returns how many were removed."""
    removed = 0
    root = Path(folder)
    if not root.exists():
        return 0
    for tmp in root.rglob(f".*{TMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
