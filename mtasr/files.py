"""Writing output folders all at once."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL = ".partial"


@contextmanager
def atomic_folder(out: Path | str) -> Iterator[Path]:
    """Yield a fresh `<out>.partial` to write into; when the block succeeds it replaces `out` in one rename, when
    it fails it is removed: a reader never sees a half-written `out`."""
    out = Path(out)
    work = out.with_name(out.name + PARTIAL)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
        shutil.rmtree(out, ignore_errors=True)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
