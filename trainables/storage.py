"""Reading and writing files on a local path or any URI pyarrow understands.

The teacher zoo and exported weights live on storage every node reaches
(a local path, NFS, or s3:// / gs:// through pyarrow's filesystems). Writes
are atomic: a temporary name, then a move; a write that fails removes its
temporary file, and a full disk or exhausted quota raises one
`StorageFullError` naming the file. Weights are read back with
`torch.load(..., weights_only=True)`, so a checkpoint can never run code.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
import uuid

import pyarrow.fs as pafs


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI such as s3://bucket/key."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def local_path(uri: str) -> str | None:
    """The path on this machine's disk of a plain path or a file:// URI; None for remote storage."""
    if "://" not in uri:
        return os.path.abspath(os.path.expanduser(uri))
    if uri.startswith("file://"):
        return resolve(uri)[1]
    return None


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI."""
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_MESSAGES = ("no space left on device", "disk quota exceeded")


class StorageFullError(OSError):
    """A write failed because the storage is full (ENOSPC) or over quota (EDQUOT).

    `filename` is the file that was being written; `free_bytes` the free space
    of its filesystem when known (local paths), else None. The temporary file
    of the failed write has been removed and the previous file (if any) is intact.
    """

    def __init__(self, path: str, err: int = errno.ENOSPC, free_bytes: int | None = None):
        what = "over quota" if err == errno.EDQUOT else "no space left"
        free = f"; {_human(free_bytes)} free" if free_bytes is not None else ""
        super().__init__(err, f"{what} writing {path}{free}; nothing was written, the previous file is intact", path)
        self.free_bytes = free_bytes


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _full_errno(exc: BaseException) -> int | None:
    """ENOSPC / EDQUOT when `exc` (or what it wraps) says the storage is full, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            if exc.errno in _FULL_ERRNOS:
                return exc.errno
            # pyarrow's IO errors carry the OS message but not always the errno
            msg = str(exc).lower()
            if _FULL_MESSAGES[0] in msg:
                return errno.ENOSPC
            if _FULL_MESSAGES[1] in msg:
                return errno.EDQUOT
        exc = exc.__cause__ or exc.__context__
    return None


def _free_bytes(fs: pafs.FileSystem | None, path: str) -> int | None:
    if fs is not None and not isinstance(fs, pafs.LocalFileSystem):
        return None
    probe = path
    while probe and not os.path.isdir(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        return shutil.disk_usage(probe or "/").free
    except OSError:
        return None


def _remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except Exception:  # already gone, or the storage is unreachable: nothing more to do
        pass


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri` atomically (temporary file, then move).

    If the write or the move fails, the temporary file is removed and the
    file at `uri` (if any) is left as it was. A full disk or an exhausted
    quota raises `StorageFullError`; other OSErrors propagate unchanged.
    """
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        fs.create_dir(parent, recursive=True)
        try:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, path)
        except BaseException:
            _remove_quietly(fs, tmp)
            raise
    except OSError as exc:
        err = _full_errno(exc)
        if err is None:
            raise
        raise StorageFullError(uri, err, _free_bytes(fs, parent)) from exc


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to the local file `path` atomically, with write_bytes' guarantees.

    A hidden temporary file in the same directory, fsynced, then os.replace;
    on any failure the temporary file is removed and the old file stays. The
    new file gets the usual permissions (0666 less the umask), not mkstemp's 0600.
    """
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding=encoding) as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        err = _full_errno(exc)
        if err is None:
            raise
        raise StorageFullError(path, err, _free_bytes(None, directory)) from exc


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no file at {uri}") from None


def save_state(obj, uri: str) -> None:
    """torch.save a state (tensors, numbers, strings, lists, dicts) atomically."""
    import torch  # here, not at import: the processes that drive experiments never need torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(uri, buf.getvalue())


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read as weights."""


def load_state(uri: str, map_location="cpu"):
    """Load a state saved by `save_state`; weights only, never pickled code."""
    import torch

    data = read_bytes(uri)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise CorruptCheckpointError(f"checkpoint {uri} is corrupt or not a kdstudy checkpoint: {exc}") from exc
