"""What the study's Ray job runtime environment (study.jobenv) costs at start-up.

    python bench/jobenv.py [--rounds 3] [--repeats 2]

Starts a private local Ray (2 CPUs) with and without the runtime environment a
study's job gets (kdstudy's packages in ``py_modules``, a working directory of its
own), alternating, and times ``ray.init`` and rounds of two fresh worker processes
that import what a trial imports (``trainables.loop``: torch and kdstudy). Prints a
table: mode, ray.init seconds, seconds per round. Run it on a quiet machine: the
numbers are process start-up, which any other load inflates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ONE = r"""
import json, os, sys, time
import ray
from study import jobenv
mode, rounds = sys.argv[1], int(sys.argv[2])
os.chdir(sys.argv[3])
env = jobenv.job_env([]) if mode == "jobenv" else None
t0 = time.time()
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
init = time.time() - t0

@ray.remote(num_cpus=1)
class Worker:
    def ping(self):
        import trainables.loop  # noqa: F401
        return os.getpid()

times = []
for _ in range(rounds):
    t = time.time()
    workers = [Worker.remote() for _ in range(2)]
    ray.get([w.ping.remote() for w in workers])
    times.append(time.time() - t)
    for w in workers:
        ray.kill(w)
    time.sleep(0.5)
ray.shutdown()
print("RESULT", json.dumps({"mode": mode, "init": init, "rounds": times}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "RAY_USAGE_STATS_ENABLED": "0"}
    print(f"{'mode':8} {'ray.init s':>10}  two fresh workers, s per round")
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.repeats):
            for mode in ("jobenv", "plain"):
                p = subprocess.run([sys.executable, "-c", ONE, mode, str(args.rounds), cwd], env=env,
                                   capture_output=True, text=True, timeout=600)
                line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    print(f"{mode:8} failed: {p.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(line[7:])
                print(f"{mode:8} {r['init']:10.1f}  " + "  ".join(f"{t:5.1f}" for t in r["rounds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
