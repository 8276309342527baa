"""Atomic writes under a full disk: one clear error, no temporary files, the old file intact."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid

import pytest

from trainables import storage
from trainables.storage import StorageFullError, atomic_write_text, write_bytes


class _FailingStream:
    """Writes part of the data to the real stream, then fails like a full disk."""

    def __init__(self, real, err):
        self.real, self.err = real, err

    def write(self, data):
        self.real.write(data[: len(data) // 2])
        raise OSError(self.err, os.strerror(self.err))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()
        return False


class _FailingFS:
    """A filesystem whose output streams fail mid-way with `err`."""

    def __init__(self, real, err):
        self.real, self.err = real, err

    def open_output_stream(self, path):
        return _FailingStream(self.real.open_output_stream(path), self.err)

    def __getattr__(self, name):
        return getattr(self.real, name)


def _fail_writes(monkeypatch, err):
    real_resolve = storage.resolve
    monkeypatch.setattr(storage, "resolve", lambda uri: (lambda fs, p: (_FailingFS(fs, err), p))(*real_resolve(uri)))


def test_write_failing_midway_with_enospc(tmp_path, monkeypatch):
    target = tmp_path / "rows.parquet"
    target.write_bytes(b"old rows")
    _fail_writes(monkeypatch, errno.ENOSPC)
    with pytest.raises(StorageFullError) as info:
        write_bytes(str(target), b"x" * 100_000)
    e = info.value
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC
    assert e.filename == str(target) and str(target) in str(e)
    assert isinstance(e.__cause__, OSError)  # the original error is kept as the cause
    assert sorted(os.listdir(tmp_path)) == ["rows.parquet"]  # no .tmp-* left
    assert target.read_bytes() == b"old rows"


def test_write_failing_with_edquot_is_storage_full(tmp_path, monkeypatch):
    _fail_writes(monkeypatch, errno.EDQUOT)
    with pytest.raises(StorageFullError) as info:
        write_bytes(str(tmp_path / "a.bin"), b"x" * 10)
    assert info.value.errno == errno.EDQUOT and "quota" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_other_oserrors_propagate_unchanged_and_clean_up(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    _fail_writes(monkeypatch, errno.EIO)
    with pytest.raises(OSError) as info:
        write_bytes(str(target), b"x" * 10)
    assert not isinstance(info.value, StorageFullError) and info.value.errno == errno.EIO
    assert sorted(os.listdir(tmp_path)) == ["a.bin"] and target.read_bytes() == b"old"


def test_failed_move_removes_temp(tmp_path, monkeypatch):
    real_resolve = storage.resolve

    class NoMove(_FailingFS):
        def open_output_stream(self, path):
            return self.real.open_output_stream(path)

        def move(self, src, dst):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "resolve", lambda uri: (lambda fs, p: (NoMove(fs, None), p))(*real_resolve(uri)))
    with pytest.raises(StorageFullError):
        write_bytes(str(tmp_path / "a.bin"), b"x")
    assert os.listdir(tmp_path) == []


def test_atomic_write_text_failing_midway(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("old report")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageFullError) as info:
        atomic_write_text(target, "<html>" + "x" * 1_400_000)
    assert info.value.filename == str(target) and "free" in str(info.value)  # local: free space is known
    assert info.value.free_bytes is not None
    assert sorted(os.listdir(tmp_path)) == ["report.html"]
    assert target.read_text() == "old report"


def test_atomic_write_text_writes_and_replaces(tmp_path):
    target = tmp_path / "sub" / "report.html"
    atomic_write_text(target, "one")
    atomic_write_text(str(target), "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["report.html"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


# --- a real full filesystem ---------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs mounted for the test (needs root or CAP_SYS_ADMIN), unmounted after."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, PermissionError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {(r.stderr or r.stdout).strip()}")
    try:
        yield mnt
    finally:
        u = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=30)
        if u.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_full_tmpfs_write_bytes(tiny_fs):
    old = tiny_fs / "rows-0001.parquet"
    write_bytes(str(old), b"rows already written")
    with pytest.raises(StorageFullError) as info:
        write_bytes(str(tiny_fs / "rows-0002.parquet"), os.urandom(2 * 1024 * 1024))
    e = info.value
    assert e.errno == errno.ENOSPC and e.filename == str(tiny_fs / "rows-0002.parquet")
    assert e.free_bytes is not None and e.free_bytes > 0  # the temp file is gone, so space is free again
    assert sorted(os.listdir(tiny_fs)) == ["rows-0001.parquet"]
    assert old.read_bytes() == b"rows already written"
    # overwriting an existing file that does not fit leaves it as it was
    with pytest.raises(StorageFullError):
        write_bytes(str(old), os.urandom(2 * 1024 * 1024))
    assert old.read_bytes() == b"rows already written"
    assert sorted(os.listdir(tiny_fs)) == ["rows-0001.parquet"]


def test_full_tmpfs_resume_once_space_is_back(tiny_fs):
    filler = tiny_fs / "filler"
    filler.write_bytes(b"\0" * (900 * 1024))
    payload = os.urandom(300 * 1024)
    with pytest.raises(StorageFullError):
        write_bytes(str(tiny_fs / "model.pt.json"), payload)
    with pytest.raises(StorageFullError):
        atomic_write_text(tiny_fs / "report.html", "x" * (300 * 1024))
    assert sorted(os.listdir(tiny_fs)) == ["filler"]
    filler.unlink()  # space is back
    write_bytes(str(tiny_fs / "model.pt.json"), payload)
    atomic_write_text(tiny_fs / "report.html", "x" * (300 * 1024))
    assert (tiny_fs / "model.pt.json").read_bytes() == payload
    assert len((tiny_fs / "report.html").read_text()) == 300 * 1024
    assert sorted(os.listdir(tiny_fs)) == ["model.pt.json", "report.html"]


def test_full_tmpfs_atomic_write_text(tiny_fs):
    report = tiny_fs / "report.html"
    atomic_write_text(report, "old report")
    with pytest.raises(StorageFullError) as info:
        atomic_write_text(report, "<html>" + "x" * (1400 * 1024))
    assert info.value.filename == str(report) and info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tiny_fs)) == ["report.html"]  # no .report.html.*.tmp
    assert report.read_text() == "old report"


def test_full_tmpfs_save_state(tiny_fs):
    torch = pytest.importorskip("torch")
    with pytest.raises(StorageFullError):
        storage.save_state({"w": torch.zeros(512 * 1024)}, str(tiny_fs / "model.pt"))  # 2 MiB of float32
    assert os.listdir(tiny_fs) == []
