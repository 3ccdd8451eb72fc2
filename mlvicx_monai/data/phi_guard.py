"""One filter for everything an ingestion or inference job prints or logs: no header value, UID or source path.

Library warnings (pydicom prints invalid values and file names, e.g. ``Invalid value for VR UI: '1.3.6.1...'`` or
``End of file reached ... in file /export/DOE^JOHN/IMG1``), our own log lines (``<path>: degenerate window``) and
exception messages all go through :meth:`PHIGuard.scrub`:

* the file being processed (absolute and relative path, and every word of every folder/file name in its path) is
  replaced by its pseudonym (``<file f0123...>``), and the input root by ``<input>``;
* quoted values (``'...'``, ``"..."``: how pydicom, numpy and PIL quote values), UIDs and other dotted numbers,
  date-like numbers and digit runs of 6+ are replaced by ``[value]``;
* every word of the PHI values read from the current file's header (:func:`~mlvicx_monai.data.deid.phi_values`)
  is replaced by ``[PHI]``.

:meth:`PHIGuard.install` routes Python warnings into logging (``logging.captureWarnings``) and puts the filter on
every logging handler of the process (adding a stderr handler when there is none, so nothing bypasses it through
logging's last-resort handler); ingestion workers install it at start-up.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mlvicx_monai.data.deid import phi_tokens

__all__ = ["PHIGuard", "PHILogFilter"]

# Greedy within a line: a name with an apostrophe (O'BRIEN) inside quotes is removed whole.
_QUOTED = re.compile(r"""b?'[^\n]*'|b?"[^\n]*\"""")
_NUMBERS = re.compile(
    r"\d+(?:\.\d+){2,}"  # UIDs and other dotted numbers
    r"|\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}"  # dates in any order and separator
    r"|\d{6,}"  # dates (YYYYMMDD), times, ids
)
_WORD = re.compile(r"[^\W_]+")
_MIN_WORD = 3
_FILE_MARK = "\x00file\x00"


class PHIGuard:
    """Scrubs text of source paths, values and the current file's PHI (see the module docstring).

    Args:
        roots: input folders (their paths never appear; they are shown as ``<input>``).
    """

    def __init__(self, roots: Iterable[str | os.PathLike] = ()) -> None:
        self.roots = sorted({os.fsdecode(os.path.abspath(os.fspath(r))) for r in roots}, key=len, reverse=True)
        self._file: tuple[list[str], str, list[re.Pattern]] | None = None
        self._tokens: list[re.Pattern] = []
        self._installed: list = []

    # ---- the current file -----------------------------------------------------------------------------------
    @contextmanager
    def file(self, path: str | os.PathLike, rel: str, pseudonym: str) -> Iterator[None]:
        """While processing one file: its paths are shown as its pseudonym, its header's PHI as ``[PHI]``."""
        absolute = os.fsdecode(os.path.abspath(os.fspath(path)))
        spellings = {absolute, os.fsdecode(os.fspath(path)), rel}
        spellings |= {s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for s in spellings}
        spellings |= {repr(s)[1:-1] for s in list(spellings)}
        words = {w for part in Path(rel).parts for w in [part, *_WORD.findall(part)] if len(w) >= _MIN_WORD}
        self._file = (sorted(spellings, key=len, reverse=True), f"<file {pseudonym}>", _patterns(words))
        self._tokens = []
        try:
            yield
        finally:
            self._file, self._tokens = None, []

    def add_phi(self, values: Iterable[str]) -> None:
        """Register the PHI values of the current file's header (their words are scrubbed from now on)."""
        self._tokens = _patterns(phi_tokens(set(values)))

    # ---- scrubbing ------------------------------------------------------------------------------------------
    def scrub(self, text: str) -> str:
        """``text`` without source paths, quoted values, UIDs/dates/ids, and the current file's PHI words."""
        text = str(text).replace(_FILE_MARK, "")
        if self._file is not None:
            for spelling in self._file[0]:
                if spelling:
                    text = text.replace(spelling, _FILE_MARK)  # put back after the number scrubbing
        for root in self.roots:
            text = text.replace(root, "<input>")
        text = _QUOTED.sub("[value]", text)
        text = _NUMBERS.sub("[value]", text)
        if self._file is not None:
            for pattern in self._file[2]:
                text = pattern.sub("[path]", text)
        for pattern in self._tokens:
            text = pattern.sub("[PHI]", text)
        return text.replace(_FILE_MARK, self._file[1]) if self._file is not None else text

    # ---- installation ---------------------------------------------------------------------------------------
    def install(self) -> None:
        """Route warnings to logging and put :class:`PHILogFilter` on every handler (idempotent)."""
        if self._installed:
            return
        logging.captureWarnings(True)
        root = logging.getLogger()
        added = None
        if not root.handlers:
            added = logging.StreamHandler(sys.stderr)
            added.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            root.addHandler(added)
        filt = PHILogFilter(self)
        handlers = set(root.handlers)
        for logger in list(logging.Logger.manager.loggerDict.values()):
            handlers.update(getattr(logger, "handlers", ()))
        for handler in handlers:
            handler.addFilter(filt)
        self._installed = [filt, handlers, added]

    def uninstall(self) -> None:
        if not self._installed:
            return
        filt, handlers, added = self._installed
        for handler in handlers:
            handler.removeFilter(filt)
        if added is not None:
            logging.getLogger().removeHandler(added)
        logging.captureWarnings(False)
        self._installed = []

    @contextmanager
    def installed(self, trusted: tuple[type[BaseException], ...] = ()) -> Iterator["PHIGuard"]:
        """:meth:`install` for the duration of a job; an exception leaving it has its message scrubbed, except the
        job's own ``trusted`` errors (argument and state errors whose messages quote settings, never file content)."""
        self.install()
        try:
            yield self
        except trusted:
            raise
        except Exception as err:
            err.args = tuple(self.scrub(a) if isinstance(a, str) else a for a in err.args)
            raise
        finally:
            self.uninstall()


class PHILogFilter(logging.Filter):
    """A logging filter that rewrites every record through :meth:`PHIGuard.scrub` (message, arguments and
    traceback text); records are never dropped, only scrubbed."""

    def __init__(self, guard: PHIGuard) -> None:
        super().__init__()
        self.guard = guard

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_phi_scrubbed", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep only its template
            message = str(record.msg)
        record.msg, record.args = self.guard.scrub(message), None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = self.guard.scrub(text), None
        elif record.exc_text:
            record.exc_text = self.guard.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.guard.scrub(record.stack_info)
        record._phi_scrubbed = True
        return True


def _patterns(words: Iterable[str]) -> list[re.Pattern]:
    """Case-insensitive patterns of words: 4+ characters anywhere (inside escaped names too), 3 as whole words."""
    out = []
    for word in sorted(set(words), key=len, reverse=True):
        if len(word) < _MIN_WORD:
            continue
        escaped = re.escape(word)
        out.append(re.compile(escaped if len(word) >= 4 else rf"(?<![^\W_]){escaped}(?![^\W_])", re.IGNORECASE))
    return out
