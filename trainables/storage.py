"""Reading and writing files on a local path or any URI pyarrow understands.

The teacher zoo and exported weights live on storage every node reaches
(a local path, NFS, or s3:// / gs:// through pyarrow's filesystems). Writes
are atomic: a temporary name, then a move. Weights are read back with
`torch.load(..., weights_only=True)`, so a checkpoint can never run code.
"""

from __future__ import annotations

import io
import os
import uuid

import pyarrow.fs as pafs
import torch


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI such as s3://bucket/key."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI."""
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri` atomically (temporary file, then move)."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no file at {uri}") from None


def save_state(obj, uri: str) -> None:
    """torch.save a state (tensors, numbers, strings, lists, dicts) atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(uri, buf.getvalue())


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read as weights."""


def load_state(uri: str, map_location="cpu"):
    """Load a state saved by `save_state`; weights only, never pickled code."""
    data = read_bytes(uri)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise CorruptCheckpointError(f"checkpoint {uri} is corrupt or not a kdstudy checkpoint: {exc}") from exc
