"""Getting list bodies: files on disk now (directories and globs of split files count as one
source); HTTP comes with the feeds."""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from blockgate import lists
from blockgate.config import Config, SourceConfig
from blockgate.engine import LoadedSource
from blockgate.errors import ListFormatError
from blockgate.lists.base import Input

_GLOB_CHARS = re.compile(r"[*?\[]")


def source_files(path: str) -> list[str]:
    """The files of a ``path:`` source, in name order: one file, a directory, or a glob.

    raises ListFormatError when nothing is there to read.
    """
    if _GLOB_CHARS.search(path):
        files = sorted(f for f in glob.glob(path) if os.path.isfile(f))
    elif os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if not f.startswith(".") and os.path.isfile(os.path.join(path, f)))
    elif os.path.isfile(path):
        files = [path]
    else:
        raise ListFormatError(path, "no such file or directory", "missing")
    if not files:
        raise ListFormatError(path, "no files match", "missing")
    return files


@contextmanager
def open_source(src: SourceConfig) -> Iterator[list[Input]]:
    """Open every file of a path source as a binary stream, named as the config names it."""
    if src.path is None:
        raise ListFormatError(src.name, "not a path source", "missing")
    files = source_files(src.path)
    with ExitStack() as stack:
        inputs = []
        for f in files:
            try:
                stream = stack.enter_context(open(f, "rb"))
            except OSError as exc:
                raise ListFormatError(f, exc.strerror or str(exc), "unreadable") from None
            inputs.append(Input(os.path.basename(f), stream))
        yield inputs


def rss_bytes() -> int:
    """Resident memory of this process (Linux), for load reports."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def load_sources(config: Config) -> list[LoadedSource]:
    """Read and parse every ``path:`` source of the config, timing each one."""
    out = []
    for src in config.sources:
        ls = LoadedSource(src)
        if src.path is None:
            ls.error = "url sources are fetched by the running daemon"
            out.append(ls)
            continue
        t0, m0 = time.perf_counter(), rss_bytes()
        try:
            with open_source(src) as inputs:
                ls.parsed = lists.parse(src.format, inputs, src.options)
        except ListFormatError as exc:
            ls.error = str(exc)
        ls.seconds = time.perf_counter() - t0
        ls.memory = rss_bytes() - m0
        out.append(ls)
    return out
