"""Output files are written whole or not at all.

A crash, a kill or a full disk while writing never leaves a partial file that looks complete: each
output is written to a hidden temporary file beside its destination, flushed to disk, then renamed
over the destination in one step (atomic on POSIX file systems).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputError(OSError):
    """An output could not be written; nothing was left at its destination."""


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, move it to `path`.

    Raises:
        OutputError: the file could not be written (the message names the path and the reason,
            e.g. no space left on device); no partial file remains.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".partial", dir=target.parent
        )
        os.close(handle)
    except OSError as error:
        raise OutputError(error.errno, _reason(target, error)) from error
    temporary = Path(name)
    try:
        yield temporary
        with temporary.open("rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(error.errno, _reason(target, error)) from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` as UTF-8 to `path`, whole or not at all; return the path."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def _reason(target: Path, error: OSError) -> str:
    why = "no space left on device" if error.errno == errno.ENOSPC else error.strerror or str(error)
    return f"cannot write {target}: {why}; nothing was written there"
