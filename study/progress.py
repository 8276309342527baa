"""Live progress of a study: one compact view of every running experiment.

Each experiment runs in its own Ray task; its results callback sends events
(trial started, epoch reported, trial ended and how) to one `Board` actor.
The driver reads the board every second and shows:

- on a terminal, a block redrawn in place: a line per running experiment
  (trials done / running / failed of those owed, best single-run validation accuracy so
  far, and the epoch progress of its running trials), with the lines that
  matter (an experiment started, finished, failed; a trial failed) printed
  above it as they happen;
- elsewhere (a log file, CI), only those lines.

Ray's, Tune's and Optuna's own log lines never reach this view: they go to
`<study>/logs/` (see `study.experiment`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import ray


@dataclass
class ExpState:
    owed: int = 0
    done: int = 0
    stopped: int = 0
    diverged: int = 0
    failed: int = 0
    running: dict = field(default_factory=dict)  # trial key -> (progress, total)
    best: float | None = None


@ray.remote(num_cpus=0)
class Board:
    """Collects experiment events (a Ray actor; cheap, no resources)."""

    def __init__(self):
        self.exps: dict[str, ExpState] = {}
        self.lines: list[str] = []

    def begin(self, name: str, owed: int) -> None:
        self.exps[name] = ExpState(owed=owed)

    def event(self, name: str, event: str, key: str, details: dict) -> None:
        st = self.exps.setdefault(name, ExpState())
        short = key.rsplit("-", 1)[-1]
        if event == "start":
            st.running[key] = (0, None)
        elif event == "result":
            st.running[key] = (details.get("progress") or 0, details.get("total"))
            val = details.get("val")
            if val is not None and (st.best is None or val > st.best):
                st.best = val
        else:
            st.running.pop(key, None)
            if event == "ok":
                st.done += 1
            elif event == "stopped":
                st.stopped += 1
            elif event == "diverged":
                st.diverged += 1
            elif event == "failed":
                st.failed += 1
                self.lines.append(f"{name}: trial {short} failed: {details.get('error')}")

    def snapshot(self) -> tuple[dict, list[str]]:
        lines, self.lines = self.lines, []
        return self.exps, lines


def _label(name: str) -> str:
    """`search-kd-t16-1a2b3c4d` -> `search kd-t16`."""
    stage, _, rest = name.partition("-")
    return f"{stage} {rest.rsplit('-', 1)[0]}" if rest else name


def summary(st: ExpState) -> str:
    parts = [f"{st.done} done"]
    if st.stopped:
        parts.append(f"{st.stopped} stopped early")
    if st.diverged:
        parts.append(f"{st.diverged} diverged")
    parts.append(f"{len(st.running)} running")
    parts.append(f"{st.failed} failed")
    owed = f" of {st.owed}" if st.owed else ""
    # the best one run (one seed); `kdstudy status` shows a configuration's mean over its seeds
    best = f" | best single-run val {100 * st.best:.1f}%" if st.best is not None else ""
    return ", ".join(parts) + owed + best


class Progress:
    """Prints study events; on a terminal also keeps a live block of running experiments."""

    def __init__(self, stream=None, quiet: bool = False, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.live = self.stream.isatty() if live is None else live
        self.t0 = time.time()
        self._block = 0  # lines of the live block currently on screen

    def _clear_block(self) -> None:
        if self._block:
            self.stream.write(f"\x1b[{self._block}F\x1b[J")
            self._block = 0

    def say(self, msg: str) -> None:
        if self.quiet:
            return
        self._clear_block()
        print(f"[{time.time() - self.t0:6.0f}s] {msg}", file=self.stream, flush=True)

    def show(self, exps: dict, running: list[str], lines: list[str]) -> None:
        """Print new event lines, then (on a terminal) redraw the block of running experiments."""
        for line in lines:
            self.say(line)
        if self.quiet or not self.live:
            return
        self._clear_block()
        block = []
        for name in running:
            st = exps.get(name)
            if st is None:
                block.append(f"  {_label(name)}: starting")
                continue
            trials = "  ".join(f"{k.rsplit('-', 1)[-1]} {p}/{t}" if t else f"{k.rsplit('-', 1)[-1]} …"
                               for k, (p, t) in sorted(st.running.items())[:4])
            more = f" +{len(st.running) - 4}" if len(st.running) > 4 else ""
            block.append(f"  {_label(name)}: {summary(st)}" + (f" | {trials}{more}" if trials else ""))
        if block:
            width = 160
            text = "\n".join(b[:width] for b in block)
            self.stream.write(text + "\n")
            self.stream.flush()
            self._block = len(block)

    def close(self) -> None:
        self._clear_block()
