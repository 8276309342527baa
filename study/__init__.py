"""What to run: the spec, the experiment graph, the Ray driver, the command line.

From Python, `study.api` (also as ``from study import run, resume, load``) runs a spec and
reads its results; see its docstring.
"""

_API = ("run", "resume", "load", "status", "runtime_env")


def __getattr__(name):  # the API is imported on first use: `import study.spec` stays light
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'study' has no attribute {name!r}")
