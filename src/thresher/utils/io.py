"""Atomic file output: every file thresher writes appears whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from thresher.utils.errors import ThresherError


def make_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; a file in the way or a missing permission is a one-line ThresherError, not an OSError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise ThresherError(f"cannot create folder {path}: {blocker} is a file, not a folder") from None
    except PermissionError as e:
        raise ThresherError(f"cannot create folder {path}: {e.strerror} ({e.filename})") from None
    return path


def _umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    make_dir(path.parent)
    # a folder it may not write raises PermissionError here, which callers with a fallback catch (a
    # read-only token store keeps its lengths in memory); the CLI prints any OSError as one line
    # host and PID in the name let remove_stale_temps tell a killed writer's leftover from a live one's
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{writer_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what open() would give it
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]  # a shared folder's other machines
_TMP_FILE = re.compile(r"^\..+\.([0-9a-f]{6})-(\d+)\.[^.]+\.tmp$")  # atomic_path's ".<name>.<host>-<pid>.<random>.tmp"


def writer_tag() -> str:
    """``<host>-<pid>`` of this process, for the names of what it writes beside a shared folder's other machines
    (see ``dead_writer``)."""
    return f"{_HOST}-{os.getpid()}"


def dead_writer(host: str | None, pid: int, this_process: bool = False) -> bool:
    """Whether a leftover tagged ``<host>-<pid>`` belongs to a writer that is gone: one on this machine (``host``
    None: an untagged older name, taken as this machine's) whose PID does not run, or, with ``this_process`` (a
    caller that knows it is not writing it now), is this process. Another machine's PID cannot be checked from
    here (and may equal a live one here), so its leftovers are never taken as dead."""
    if (host or _HOST) != _HOST:
        return False
    return (this_process and pid == os.getpid()) or not pid_alive(pid)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the atomic_path temporaries in ``folder`` whose writer died (kill -9 mid-write leaves them: a
    whole tokens.bin or labels.parquet each, never read again); a live process's, or another machine's, are kept."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TMP_FILE.match(p.name)
        if m and dead_writer(m.group(1), int(m.group(2))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs; a zombie (killed, not yet reaped: a killed job whose parent died waits for
    init, which in a container may be never) does not."""
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):  # no /proc (macOS)
        return True


def exit_with_parent(poll_s: float = 0.5) -> None:
    """Call in a worker process: it exits once the process that started it is gone. A spawn pool's workers
    outlive a kill -9 of the main process otherwise, holding their memory (and GPU) for good and writing
    into the shards a rerun redoes."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Any) -> None:
    """One JSON object per line; numpy values become plain numbers, anything else unknown its str()."""
    atomic_write_text(path, "".join(json.dumps(r, default=_lenient_default) + "\n" for r in rows))


def jsonable(obj: Any) -> Any:
    """``obj`` as read_json reads back what atomic_write_json wrote (numpy values as numbers, paths as str)."""
    return json.loads(json.dumps(obj, default=_json_default))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _lenient_default(o: Any) -> Any:
    try:
        return _json_default(o)
    except TypeError:
        return str(o)

