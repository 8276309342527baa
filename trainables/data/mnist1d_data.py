"""``mnist1d``: the embedded default dataset (Greydanus 2020), generated locally, never downloaded.

Generated with the ``mnist1d`` package's ``make_dataset`` (never its download URL)
and cached as an ``.npz`` under ``root``, keyed by the generation arguments and the
package's version. Signals, float32 ``(N, 1, 40)``, 10 classes (the digits 0-9);
``make_dataset`` keeps 80 % of ``num_samples`` as its training split and 20 % as
its test split. Normalisation: the training split's mean and std.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile

import numpy as np
import torch

from ..options import Option
from .registry import DatasetEntry, DatasetInfo, Loaded, register_dataset, root_of

#: MNIST-1D generation: the package's canonical seed unless the config gives ``data_seed``
MNIST1D_DEFAULT_SEED = 42
#: the share of `num_samples` that `make_dataset` keeps as its training split (its `train_split`)
MNIST1D_TRAIN_SHARE = 0.8


@contextlib.contextmanager
def _preserve_global_rng():
    """``mnist1d`` seeds numpy's and Python's global RNGs; put them back afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _mnist1d_args(num_samples: int, seed: int) -> dict:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # never used: the data is generated, not downloaded
    args["num_samples"] = int(num_samples)
    args["seed"] = int(seed)
    if float(args.get("train_split", MNIST1D_TRAIN_SHARE)) != MNIST1D_TRAIN_SHARE:
        raise RuntimeError(f"mnist1d's train_split is {args['train_split']}, kdstudy expects {MNIST1D_TRAIN_SHARE}")
    return args


def _mnist1d_cache_path(root: str, num_samples: int, seed: int) -> str:
    """The cached arrays of (num_samples, seed) as the installed mnist1d generates them: the
    package's version is in the key, so reading the cache never imports it (about 1 s of
    matplotlib and scipy in every fresh trial process)."""
    from importlib.metadata import version

    ident = {"num_samples": int(num_samples), "seed": int(seed), "mnist1d": version("mnist1d")}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(root, "mnist1d", f"mnist1d_n{int(num_samples)}_s{int(seed)}_{key}.npz")


def _generate_mnist1d(args: dict) -> dict[str, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    with _preserve_global_rng():
        d = make_dataset(ObjectView(dict(args)))
    return {
        "x": np.asarray(d["x"], dtype=np.float32),
        "y": np.asarray(d["y"], dtype=np.int64),
        "x_test": np.asarray(d["x_test"], dtype=np.float32),
        "y_test": np.asarray(d["y_test"], dtype=np.int64),
    }


def _atomic_savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _load_npz(path: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as z:
            return {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    except (OSError, KeyError, ValueError):
        return None


def _signals(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(1)


def _labels(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


@register_dataset("mnist1d")
class MNIST1D(DatasetEntry):
    options = {
        "num_samples": Option(10_000, ("integer",), minimum=200, help="samples generated (80 % train, 20 % test)"),
        "data_seed": Option(MNIST1D_DEFAULT_SEED, ("integer",), minimum=0, help="seed of the generation"),
    }

    @staticmethod
    def _n_seed(cfg: dict) -> tuple[int, int]:
        return int(cfg.get("num_samples", 10_000)), int(cfg.get("data_seed", MNIST1D_DEFAULT_SEED))

    def info(self, cfg: dict) -> DatasetInfo:
        n, _ = self._n_seed(cfg)
        n_train = int(n * MNIST1D_TRAIN_SHARE)
        return DatasetInfo(kind="signal", input_shape=(1, 40), num_classes=10, train_size=n_train,
                           test_size=n - n_train, class_names=tuple(str(d) for d in range(10)),
                           provenance={"test": "mnist1d's own test split (20 % of num_samples)"})

    def load(self, cfg: dict) -> Loaded:
        n, seed = self._n_seed(cfg)
        path = _mnist1d_cache_path(root_of(cfg), n, seed)
        arrays = _load_npz(path) if os.path.exists(path) else None
        if arrays is None:
            arrays = _generate_mnist1d(_mnist1d_args(n, seed))
            _atomic_savez(path, arrays)
        return Loaded(train=(_signals(arrays["x"]), _labels(arrays["y"])),
                      test=(_signals(arrays["x_test"]), _labels(arrays["y_test"])))

    def check(self, cfg: dict) -> list[str]:
        """The generated cache is made now, once, instead of by every trial at once."""
        self.load(cfg)
        return []
