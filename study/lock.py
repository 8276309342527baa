"""One driver per study: a lease on the study folder, kept alive by a heartbeat.

`StudyLock(root).acquire()` writes `<study>/lock.json` (who: host and pid,
since when, last heartbeat, lease length). A second driver finds a live
lease and stops with one line naming the holder; a lease whose heartbeat is
older than its length (a killed driver) is taken over, at once when the
holder was a process on this host that no longer exists. Works on local disks
and on URIs: on a local disk the first lock file is created exclusively;
on object stores, where there is no exclusive create, the writer reads the
lock back after a pause and only the driver whose token is there holds it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from trainables import storage


class StudyLocked(RuntimeError):
    """Another live driver holds the study."""


def _now() -> float:
    return time.time()


def _fmt(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class StudyLock:
    def __init__(self, root: str, lease_s: float = 60.0, settle_s: float = 0.3):
        self.uri = storage.join(root, "lock.json")
        self.lease_s = float(lease_s)
        self.settle_s = settle_s
        self.token = uuid.uuid4().hex
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.owner = f"{self.host} pid {self.pid}"
        self.since = _now()
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ file
    def _read(self) -> dict | None:
        try:
            info = json.loads(storage.read_bytes(self.uri))
            return info if isinstance(info, dict) else {}
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return {}  # a torn lock file: treated as expired

    def _payload(self) -> bytes:
        return json.dumps({"token": self.token, "owner": self.owner, "host": self.host, "pid": self.pid,
                           "since": self.since, "heartbeat": _now(), "lease_s": self.lease_s}).encode()

    def _create_exclusive(self) -> bool:
        """On a local disk: create the lock only if none exists (no race between two starts)."""
        path = storage.local_path(self.uri)
        if path is None:
            return False
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._payload())
        return True

    # ------------------------------------------------------------------ api
    def acquire(self) -> None:
        if not self._create_exclusive():
            info = self._read()
            if info and info.get("token") != self.token and not self._holder_is_dead(info):
                age = _now() - float(info.get("heartbeat", 0))
                if age < float(info.get("lease_s", self.lease_s)):
                    raise StudyLocked(self.describe(info))
            storage.write_bytes(self.uri, self._payload())  # absent, torn or expired: take it over
            time.sleep(self.settle_s)
            info = self._read()
            if not info or info.get("token") != self.token:
                raise StudyLocked(self.describe(info or {}))
        self._thread = threading.Thread(target=self._beat, name="kdstudy-lock", daemon=True)
        self._thread.start()

    def _holder_is_dead(self, info: dict) -> bool:
        """A lock written on this host by a process that no longer exists (a killed driver) is
        stale at once; elsewhere only its lease can tell."""
        if info.get("host") != self.host or not isinstance(info.get("pid"), int):
            return False
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self, info: dict) -> str:
        owner = info.get("owner", "another driver")
        since = _fmt(float(info["since"])) if info.get("since") else "an unknown time"
        beat = f", last heartbeat {max(0, _now() - float(info['heartbeat'])):.0f} s ago" if info.get("heartbeat") else ""
        return (f"the study is in use by {owner} since {since}{beat} ({self.uri}); "
                f"wait for it to finish, or stop it first")

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            info = self._read()
            if info and info.get("token") not in (None, self.token):
                self.lost = True  # another driver took over (our heartbeats stopped for a whole lease)
                return
            try:
                storage.write_bytes(self.uri, self._payload())
            except OSError:
                pass  # storage hiccup: the next beat tries again

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        info = self._read()
        if info is not None and info.get("token") == self.token:
            fs, path = storage.resolve(self.uri)
            try:
                fs.delete_file(path)
            except OSError:
                pass

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
