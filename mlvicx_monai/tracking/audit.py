"""PHI audit of an MLflow store: search the backend database and the artifact tree for given PHI strings.

What is searched:

- backend store (SQLite file or any SQLAlchemy URL, e.g. ``postgresql://``): every text and binary column of
  every table, so params, run/experiment tags, metric names, run names, model-version tags and descriptions,
  registered-model descriptions, LoggedModel params/tags, dataset names... (whatever MLflow's schema holds,
  now or after a migration). Numeric columns (metric values, timestamps, steps) are not searched.
- artifact tree: every file's relative path, every file's content, and the members of zip archives
  (``torch.save`` files, ``.zip``) decompressed. One exception: the package source every registered model ships
  (``.../code/mlvicx_monai/...``, MLflow ``code_paths``) is skipped file by file where it is byte-identical to the
  installed package (it is this project's code, not data; e.g. the synthetic phantom's list of fake surnames would
  otherwise hit any real patient called BROWN). A shipped file that differs from the installed one is searched.

Matching: text (database strings, UTF-8 files, path names) case-insensitively on whole words (the value may
not be flanked by letters or digits; ``_`` counts as a separator); binary content on the exact UTF-8 bytes.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PhiHit", "audit_phi", "audit_artifacts", "audit_backend_store"]

_CONTEXT = 30
_PACKAGE = Path(__file__).resolve().parents[1]
_SHIPPED = re.compile(r"(?:^|/)code/" + re.escape(_PACKAGE.name) + r"/(.+)$")


@dataclass(frozen=True, order=True)
class PhiHit:
    """One occurrence of a PHI value.

    Attributes:
        where: ``"database"``, ``"artifact"`` (file content), ``"artifact-member"`` (inside a zip archive) or
            ``"artifact-path"`` (a file or folder name).
        location: ``table.column [primary key]`` or the path relative to the artifact root (``!member``).
        value: the PHI value (as given) that matched.
        context: a few characters around the match (contains the value: keep the report local).
    """

    where: str
    location: str
    value: str
    context: str

    def __str__(self) -> str:
        return f"{self.where}: {self.location}: {self.value!r} in ...{self.context}..."


#: shortest value searched for in binary content (see :class:`_Matcher`)
MIN_BINARY_LENGTH = 6


class _Matcher:
    def __init__(self, values: Iterable[str]) -> None:
        cleaned = sorted({str(v).strip() for v in values if v is not None and str(v).strip()}, key=len, reverse=True)
        if not cleaned:
            raise ValueError("no PHI values to search for")
        self.values = cleaned
        self._by_fold = {v.casefold(): v for v in cleaned}
        alternation = "|".join(re.escape(v) for v in cleaned)
        self._text = re.compile(rf"(?<![^\W_])(?:{alternation})(?![^\W_])", re.IGNORECASE)
        # binary content (weights, images) is searched for exact bytes of values of MIN_BINARY_LENGTH or more:
        # a 3-byte string occurs by chance about 2.7 times in 45 MB of random bytes (a ResNet18's weights)
        self._bytes = [(v, v.encode("utf-8")) for v in cleaned if len(v.encode("utf-8")) >= MIN_BINARY_LENGTH]

    def text(self, text: str) -> Iterator[tuple[str, str]]:
        for match in self._text.finditer(text):
            value = self._by_fold.get(match.group(0).casefold())
            if value is None:  # case folding changed the length: find the value by case-insensitive compare
                same = (v for v in self.values if re.fullmatch(re.escape(v), match.group(0), re.IGNORECASE))
                value = next(same, match.group(0))
            yield value, _snippet(text, match.start(), match.end())

    def binary(self, data: bytes) -> Iterator[tuple[str, str]]:
        for value, needle in self._bytes:
            index = data.find(needle)
            if index >= 0:
                chunk = data[max(0, index - _CONTEXT) : index + len(needle) + _CONTEXT]
                yield value, chunk.decode("utf-8", errors="replace").replace("\x00", ".")


def _snippet(text: str, start: int, end: int) -> str:
    return text[max(0, start - _CONTEXT) : end + _CONTEXT].replace("\n", " ")


def _content_hits(matcher: _Matcher, data: bytes, where: str, location: str) -> list[PhiHit]:
    hits = []
    text = None
    if b"\x00" not in data:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is not None:
        found = matcher.text(text)
    else:
        found = matcher.binary(data)
    for value, context in found:
        hits.append(PhiHit(where, location, value, context))
    return hits


def is_shipped_package_source(rel: str, data: bytes) -> bool:
    """Whether the artifact at ``rel`` (``/``-separated) is a byte-identical copy of this package's own source."""
    match = _SHIPPED.search(rel)
    if match is None:
        return False
    installed = _PACKAGE / match.group(1)
    try:
        return installed.is_file() and installed.read_bytes() == data
    except OSError:
        return False


def audit_artifacts(phi_values: Iterable[str], artifact_root: str | os.PathLike) -> list[PhiHit]:
    """Hits of ``phi_values`` in the names and contents of every file under ``artifact_root`` (the package source
    shipped with models is skipped where identical to the installed package, see the module docstring)."""
    matcher = _Matcher(phi_values)
    root = Path(artifact_root)
    if not root.is_dir():
        raise FileNotFoundError(f"artifact root {root} is not a folder")
    hits: list[PhiHit] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            for value, context in matcher.text(rel):
                hits.append(PhiHit("artifact-path", rel, value, context))
        for name in filenames:
            path = Path(dirpath) / name
            rel = os.path.relpath(path, root)
            data = path.read_bytes()
            if is_shipped_package_source(Path(rel).as_posix(), data):
                continue
            hits.extend(_content_hits(matcher, data, "artifact", rel))
            if data[:4] == b"PK\x03\x04":
                hits.extend(_zip_hits(matcher, data, rel))
    return sorted(set(hits))


def _zip_hits(matcher: _Matcher, data: bytes, rel: str) -> list[PhiHit]:
    hits = []
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return hits
    with archive:
        for info in archive.infolist():
            location = f"{rel}!{info.filename}"
            for value, context in matcher.text(info.filename):
                hits.append(PhiHit("artifact-member", location, value, context))
            if info.is_dir() or info.file_size > (1 << 30):
                continue
            hits.extend(_content_hits(matcher, archive.read(info), "artifact-member", location))
    return hits


def _engine_url(backend_store: str | os.PathLike) -> str:
    text = os.fspath(backend_store)
    if "://" in text:
        return text
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"backend store {path} does not exist")
    return f"sqlite:///{path.resolve()}"


def audit_backend_store(phi_values: Iterable[str], backend_store: str | os.PathLike) -> list[PhiHit]:
    """Hits of ``phi_values`` in every text/binary column of every table of the MLflow backend database.

    ``backend_store``: a SQLite file path or a SQLAlchemy URL (``sqlite:///...``, ``postgresql://...``).
    """
    import sqlalchemy as sa

    matcher = _Matcher(phi_values)
    engine = sa.create_engine(_engine_url(backend_store))
    hits: list[PhiHit] = []
    try:
        metadata = sa.MetaData()
        metadata.reflect(bind=engine)
        with engine.connect() as connection:
            for table in metadata.sorted_tables:
                key_columns = [c.name for c in table.primary_key.columns]
                for row in connection.execute(sa.select(table)).mappings():
                    key = ",".join(str(row[k])[:40] for k in key_columns)
                    for column, value in row.items():
                        if isinstance(value, str):
                            found = matcher.text(value)
                        elif isinstance(value, (bytes, bytearray, memoryview)):
                            found = matcher.binary(bytes(value))
                        else:
                            continue
                        for phi, context in found:
                            hits.append(PhiHit("database", f"{table.name}.{column} [{key}]", phi, context))
    finally:
        engine.dispose()
    return sorted(set(hits))


def audit_phi(
    phi_values: Iterable[str],
    backend_store: str | os.PathLike | None = None,
    artifact_root: str | os.PathLike | None = None,
) -> list[PhiHit]:
    """Search an MLflow backend store and/or artifact tree for ``phi_values``; returns every hit (empty: clean).

    Args:
        phi_values: the PHI strings (names, IDs, dates, accession numbers...); empty strings are ignored.
        backend_store: the SQLite file (e.g. ``mlflow.db``) or SQLAlchemy URL of the store.
        artifact_root: the artifact folder (e.g. ``mlruns`` or the server's ``--artifacts-destination``).
    """
    values = list(phi_values)
    if backend_store is None and artifact_root is None:
        raise ValueError("give backend_store and/or artifact_root to audit")
    hits: list[PhiHit] = []
    if backend_store is not None:
        hits.extend(audit_backend_store(values, backend_store))
    if artifact_root is not None:
        hits.extend(audit_artifacts(values, artifact_root))
    return hits
