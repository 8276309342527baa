"""`kdstudy dashboard STUDY`: optuna-dashboard on every search of a study at once, read-only.

A study keeps one Optuna journal per search (`<study>/optuna/<experiment>.journal`,
see `study.experiment.Journal`); optuna-dashboard shows one storage. This
builds one: every journal is copied to a private temporary folder (the study
folder is only ever read, local or on object storage) and every study in
it is copied into one in-memory Optuna storage, which the dashboard reads.
The storage refuses writes, and so does the web server (any request but
GET/HEAD answers 405), so nothing the page offers (renaming, deleting,
notes, telling trials) can change a search. While the study runs, the
journals are checked again at most every `--refresh` seconds and the view
rebuilt when one changed; a search keeps its place (and its id in the
page's address) across rebuilds.

The server binds to 127.0.0.1 unless `--host` says otherwise (it has no
authentication; a remote machine's dashboard is reached through an SSH
tunnel: `ssh -L 8080:127.0.0.1:8080 host`).
"""

from __future__ import annotations

import abc
import logging
import os
import shutil
import sys
import tempfile
import threading
import time

from trainables import storage

log = logging.getLogger(__name__)

#: BaseStorage methods that change a storage: refused
WRITES = ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "create_new_trial",
          "set_trial_param", "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
          "set_trial_system_attr")
#: BaseStorage methods that read: answered by the current in-memory copy
READS = ("get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
         "get_study_system_attrs", "get_all_studies", "get_trial", "get_all_trials", "get_n_trials",
         "get_best_trial", "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs",
         "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial_param",
         "check_trial_is_updatable")


class ReadOnly(RuntimeError):
    """The dashboard's storage cannot be changed."""


def journal_uris(root: str) -> list[str]:
    """The study's Optuna journals (one per search), sorted by name."""
    import pyarrow.fs as pafs

    folder = storage.join(root, "optuna")
    fs, path = storage.resolve(folder)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except (OSError, ValueError):
        return []
    names = sorted(os.path.basename(i.path) for i in infos
                   if i.type == pafs.FileType.File and i.path.endswith(".journal"))
    return [storage.join(folder, n) for n in names]


def _signature(uris: list[str]) -> tuple:
    """What changes when a journal is appended to (its size and time), without reading it."""
    out = []
    for uri in uris:
        fs, path = storage.resolve(uri)
        info = fs.get_file_info(path)
        out.append((uri, info.size, info.mtime_ns))
    return tuple(out)


def _build(uris: list[str], scratch: str):
    """One in-memory Optuna storage holding a copy of every study in the journals."""
    import optuna
    from optuna.storages import InMemoryStorage, JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from .experiment import repair_journal

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    merged = InMemoryStorage()
    skipped = []
    for uri in uris:
        local = os.path.join(scratch, os.path.basename(uri))
        try:
            with open(local, "wb") as f:
                f.write(storage.read_bytes(uri))
            repair_journal(local)  # a run in progress may be mid-write: its last record is dropped
            source = JournalStorage(JournalFileBackend(local))
            for study in source.get_all_studies():
                optuna.copy_study(from_study_name=study.study_name, from_storage=source, to_storage=merged)
        except Exception as exc:  # one unreadable journal does not hide the others
            skipped.append(f"{uri}: {exc}")
        finally:
            if os.path.exists(local):
                os.remove(local)
    return merged, skipped


def _storage_class():
    from optuna.storages import BaseStorage

    def reader(name):
        def method(self, *args, **kwargs):
            return getattr(self.current(), name)(*args, **kwargs)

        method.__name__ = name
        return method

    def writer(name):
        def method(self, *args, **kwargs):
            raise ReadOnly(f"kdstudy dashboard is read-only ({name} refused)")

        method.__name__ = name
        return method

    namespace = {name: reader(name) for name in READS}
    namespace.update({name: writer(name) for name in WRITES})
    namespace["remove_session"] = lambda self: None
    cls = type("StudySearches", (_Searches, BaseStorage), namespace)
    abc.update_abstractmethods(cls)
    return cls


class _Searches:
    """A read-only Optuna storage of all of a study's searches (see the module docstring)."""

    def __init__(self, root: str, refresh: float = 5.0):
        self.root = root
        self.refresh = refresh
        self.scratch = tempfile.mkdtemp(prefix="kdstudy-dashboard-")
        self._lock = threading.Lock()
        self._order: list[str] = []      # journals in the order first seen: ids stay put on a rebuild
        self._signature: tuple = ()
        self._checked = 0.0
        self._storage = None
        self.skipped: list[str] = []
        self.rebuild()

    def rebuild(self) -> None:
        uris = journal_uris(self.root)
        self._order += [u for u in uris if u not in self._order]
        uris = [u for u in self._order if u in uris]
        signature = _signature(uris)
        self._checked = time.monotonic()
        if signature == self._signature and self._storage is not None:
            return
        merged, skipped = _build(uris, self.scratch)
        for problem in skipped:
            if problem not in self.skipped:
                log.warning("kdstudy dashboard: skipped %s", problem)
        self._storage, self._signature, self.skipped = merged, signature, skipped

    def current(self):
        if self.refresh and time.monotonic() - self._checked >= self.refresh and self._lock.acquire(blocking=False):
            try:  # one request rebuilds; the others read the previous copy meanwhile
                self.rebuild()
            except Exception as exc:  # the study folder went away for a moment: keep what is shown
                log.warning("kdstudy dashboard: could not read the journals again: %s", exc)
            finally:
                self._lock.release()
        return self._storage

    @property
    def n_searches(self) -> int:
        return len(self._storage.get_all_studies())

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def searches(root: str, refresh: float = 5.0):
    """The read-only storage of a study's searches (an `optuna.storages.BaseStorage`)."""
    return _storage_class()(root, refresh)


def read_only(app):
    """The WSGI app answering only GET and HEAD (405 for anything that would write)."""

    def guarded(environ, start_response):
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            body = b'{"reason": "kdstudy dashboard is read-only"}'
            start_response("405 Method Not Allowed", [("Content-Type", "application/json"), ("Allow", "GET, HEAD"),
                                                      ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return guarded


def make_server(root: str, host: str = "127.0.0.1", port: int = 8080, refresh: float = 5.0):
    """(server, storage): a threaded WSGI server of optuna-dashboard on the study's searches."""
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
    from wsgiref.simple_server import make_server as wsgi_server

    from optuna_dashboard import wsgi

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):  # no line per request
            pass

    class Threaded(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        block_on_close = False  # Ctrl-C stops at once: a request still being answered is not waited for

    store = searches(root, refresh)
    server = wsgi_server(host, port, read_only(wsgi(store)), server_class=Threaded, handler_class=Quiet)
    return server, store


def is_study(root: str) -> bool:
    return storage.exists(storage.join(root, "spec.json")) or bool(journal_uris(root))


def main(path: str, host: str = "127.0.0.1", port: int = 8080, refresh: float = 5.0) -> int:
    """The CLI command: serve until Ctrl-C. Returns the exit code."""
    root = path if "://" in path else os.path.abspath(os.path.expanduser(path))
    if not is_study(root):
        print(f"kdstudy: {path} is not a kdstudy study folder (no spec.json, no optuna/*.journal)", file=sys.stderr)
        return 2
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        print("kdstudy: the dashboard needs optuna-dashboard (pip install 'kdstudy[dashboard]')", file=sys.stderr)
        return 2
    try:
        server, store = make_server(root, host, port, refresh)
    except OSError as exc:
        print(f"kdstudy: cannot listen on {host}:{port}: {exc.strerror or exc} (choose another with --port)",
              file=sys.stderr)
        return 2
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    n = store.n_searches
    note = "" if n else " (none yet: they appear as the study runs)"
    print(f"kdstudy dashboard: {n} search(es) of {root}{note}, read-only", flush=True)
    for problem in store.skipped:
        print(f"kdstudy: skipped {problem}", file=sys.stderr)
    print(f"  http://{shown}:{bound_port}/dashboard   (Ctrl-C or SIGTERM stops)", flush=True)
    import signal

    def stop(signum, frame):  # `kill`, a service manager or `timeout` stop it as Ctrl-C does
        raise KeyboardInterrupt

    try:
        # Ctrl-C stops it even when it was started with SIGINT ignored (as a background job, or the
        # child of a parent that ignores it, inherits it); without this it would sit in select()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (called from a notebook's thread): Ctrl-C as Python has it
        pass
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
    return 0
