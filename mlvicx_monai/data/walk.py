"""Walking an export tree without silent skips: every entry is either a file to read or a listed problem.

``os.walk`` ignores folders it cannot list and names it cannot open, and ``Path.rglob`` raises on the first path
over ``PATH_MAX``. :func:`walk_tree` walks with directory file descriptors (``openat``), so it reaches folders
however deep, and reports instead of skipping: unreadable folders, paths too long to open, FIFOs/sockets/devices,
symbolic links to folders (not followed: a link loop or a link out of the export would ingest other data) and
broken links. Names are kept as the file system gives them (``str`` with undecodable bytes as lone surrogates,
``os.fsencode`` gives the raw bytes back), so any byte sequence works.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

__all__ = ["PATH_MAX", "WalkProblem", "WalkResult", "walk_tree"]

#: Longest path (bytes, with the final NUL) the kernel opens; deeper files are reported, not opened.
PATH_MAX: int = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
_MAX_DEPTH = 256  # one open descriptor per level; beyond this the folder is reported


@dataclass(frozen=True)
class WalkProblem:
    """An entry of the tree that is not a readable regular file: ``rel`` (relative path), a rejection code and a
    reason (no path or name in it)."""

    rel: str
    code: str
    reason: str


@dataclass
class WalkResult:
    files: list[str] = field(default_factory=list)  # relative POSIX paths, sorted
    problems: list[WalkProblem] = field(default_factory=list)


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def walk_tree(root: str | os.PathLike) -> WalkResult:
    """Every regular file under ``root`` (symbolic links to files included) and every entry that is not one.

    Raises:
        OSError: ``root`` itself cannot be opened as a folder.
    """
    root_abs = os.path.abspath(os.fspath(root))
    root_len = len(os.fsencode(root_abs))
    result = WalkResult()
    top = os.open(root_abs, os.O_RDONLY | os.O_DIRECTORY)
    # a stack of (folder descriptor, relative path, sub-folders left to visit); one descriptor per level
    stack: list[tuple[int, str, list[str]]] = []

    def enter(fd: int, rel: str) -> None:
        try:
            names = sorted(os.listdir(fd))
        except OSError as err:
            os.close(fd)
            result.problems.append(_folder_problem(rel, err))
            return
        subfolders = []
        for name in names:
            child = _join(rel, name)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError as err:
                result.problems.append(_entry_problem(child, err))
                continue
            if stat.S_ISDIR(st.st_mode):
                subfolders.append(name)
            elif stat.S_ISREG(st.st_mode):
                _add_file(child, fd, name)
            elif stat.S_ISLNK(st.st_mode):
                try:
                    target = os.stat(name, dir_fd=fd, follow_symlinks=True)
                except OSError:
                    result.problems.append(WalkProblem(child, "not_a_regular_file", "a broken symbolic link"))
                    continue
                if stat.S_ISREG(target.st_mode):
                    _add_file(child, fd, name)
                elif stat.S_ISDIR(target.st_mode):
                    result.problems.append(WalkProblem(
                        child, "not_a_regular_file",
                        "a symbolic link to a folder: not followed (it could loop or lead out of the export); "
                        "pass the folder it points to as its own input if it belongs to the export",
                    ))
                else:
                    result.problems.append(
                        WalkProblem(child, "not_a_regular_file", "a symbolic link to a FIFO, socket or device")
                    )
            else:
                result.problems.append(
                    WalkProblem(child, "not_a_regular_file", "a FIFO, socket or device file, not a regular file")
                )
        stack.append((fd, rel, subfolders[::-1]))

    def _add_file(child: str, fd: int, name: str) -> None:
        if root_len + 1 + len(os.fsencode(child)) >= PATH_MAX:
            result.problems.append(WalkProblem(
                child, "path_too_long",
                f"the path is {root_len + 1 + len(os.fsencode(child))} bytes long, over this system's PATH_MAX of "
                f"{PATH_MAX}: move or rename the folders above it to shorten it, then rerun",
            ))
            return
        result.files.append(child)

    enter(top, "")
    while stack:
        fd, rel, subfolders = stack[-1]
        if not subfolders:
            os.close(fd)
            stack.pop()
            continue
        name = subfolders.pop()
        child = _join(rel, name)
        if len(stack) >= _MAX_DEPTH:
            result.problems.append(WalkProblem(
                child, "path_too_long", f"the folder is nested more than {_MAX_DEPTH} levels deep; not walked",
            ))
            continue
        try:
            child_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as err:
            result.problems.append(_folder_problem(child, err))
            continue
        enter(child_fd, child)
    result.files.sort()
    result.problems.sort(key=lambda p: p.rel)
    return result


def _folder_problem(rel: str, err: OSError) -> WalkProblem:
    if err.errno in (errno.EACCES, errno.EPERM):
        return WalkProblem(
            rel or ".", "unreadable_folder",
            "the folder cannot be listed (permission denied): the files in it, if any, were not read; give the "
            "ingesting user read access and rerun into the same output folder to add them",
        )
    if err.errno == errno.ENAMETOOLONG:
        return WalkProblem(rel, "path_too_long", "the folder's path is too long to open")
    return WalkProblem(
        rel or ".", "unreadable_folder", f"the folder cannot be listed ({err.strerror or type(err).__name__})"
    )


def _entry_problem(rel: str, err: OSError) -> WalkProblem:
    if err.errno == errno.ENAMETOOLONG:
        return WalkProblem(rel, "path_too_long", "the path is too long to open")
    return WalkProblem(rel, "io_error", f"the entry cannot be examined ({err.strerror or type(err).__name__})")

