"""trainables.data: dataset loading, splits, caching and on-device batching (CPU, fast)."""

from __future__ import annotations

import glob
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

from trainables import data as D
from trainables.data import DeviceBatches, Splits, dataset_facts, describe, load_dataset, to_device
from trainables.data import mnist1d_data

# --------------------------------------------------------------------------- MNIST-1D


def _mnist_cfg(root, **kw):
    return {"name": "mnist1d", "root": str(root), "num_samples": 1000, **kw}


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    return tmp_path_factory.mktemp("mnist1d")


@pytest.fixture(scope="module")
def mnist(mnist_root) -> Splits:
    return load_dataset(_mnist_cfg(mnist_root))


def test_mnist1d_shapes_dtypes_classes(mnist, mnist_root):
    s = mnist
    assert s.name == "mnist1d" and s.kind == "signal" and s.num_classes == 10
    assert s.input_shape == (1, 40)
    facts = dataset_facts(_mnist_cfg(mnist_root))  # what the spec and the planner assume
    assert (facts.input_shape, facts.num_classes) == (s.input_shape, s.num_classes)
    # mnist1d: 1000 samples, 80 % its own train split (800), 10 % of that carved to val
    assert len(s.train[0]) == 720 and len(s.val[0]) == 80 and len(s.test[0]) == 200
    for x, y in (s.train, s.val, s.test):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 40) and x.device.type == "cpu"
        assert y.dtype == torch.int64 and len(y) == len(x)
        assert int(y.min()) >= 0 and int(y.max()) <= 9
    assert set(s.train[1].tolist()) == set(range(10))
    assert s.mean.shape == (1, 1) and s.std.shape == (1, 1)
    torch.testing.assert_close(s.mean, s.train[0].mean(dim=(0, 2)).reshape(1, 1))
    assert describe(s) == {
        "dataset": "mnist1d",
        "kind": "signal",
        "num_classes": 10,
        "input_shape": [1, 40],
        "n_train": 720,
        "n_val": 80,
        "n_test": 200,
    }


def test_mnist1d_deterministic_across_fresh_generations(mnist, tmp_path):
    again = load_dataset(_mnist_cfg(tmp_path))  # different root: generated from scratch
    for a, b in ((mnist.train, again.train), (mnist.val, again.val), (mnist.test, again.test)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = load_dataset(_mnist_cfg(tmp_path, data_seed=7))
    assert not torch.equal(other.test[0], mnist.test[0])


def test_mnist1d_generation_leaves_global_rng_alone(tmp_path):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    load_dataset(_mnist_cfg(tmp_path, num_samples=200))
    assert np.random.rand() == expected


def test_mnist1d_is_cached_and_reread(mnist, mnist_root, monkeypatch):
    files = glob.glob(os.path.join(str(mnist_root), "mnist1d", "*.npz"))
    assert len(files) == 1 and "n1000" in os.path.basename(files[0])
    assert not glob.glob(os.path.join(str(mnist_root), "mnist1d", ".tmp-*"))

    def no_generation(args):
        raise AssertionError("regenerated although the cache file exists")

    monkeypatch.setattr(mnist1d_data, "_generate_mnist1d", no_generation)
    again = load_dataset(_mnist_cfg(mnist_root))
    assert torch.equal(again.train[0], mnist.train[0]) and torch.equal(again.test[1], mnist.test[1])


def test_mnist1d_val_carved_from_train_disjoint(mnist, mnist_root):
    s = mnist
    tr, va = set(s.train_index.tolist()), set(s.val_index.tolist())
    assert not tr & va
    assert tr | va == set(range(800))  # together they are exactly mnist1d's train split
    raw = np.load(glob.glob(os.path.join(str(mnist_root), "mnist1d", "*.npz"))[0])
    x_src = torch.from_numpy(raw["x"]).unsqueeze(1)
    assert torch.equal(s.train[0], x_src[s.train_index])
    assert torch.equal(s.val[0], x_src[s.val_index])
    assert torch.equal(s.val[1], torch.from_numpy(raw["y"])[s.val_index])
    assert torch.equal(s.test[0], torch.from_numpy(raw["x_test"]).unsqueeze(1))  # test untouched
    # different split seed: a different val set, same test set
    other = load_dataset(_mnist_cfg(mnist_root, split_seed=1))
    assert set(other.val_index.tolist()) != va
    assert torch.equal(other.test[0], s.test[0])


def test_train_subset_keeps_first_n_of_shuffled_train(mnist, mnist_root):
    sub = load_dataset(_mnist_cfg(mnist_root, train_subset=50))
    assert len(sub.train[0]) == 50
    assert torch.equal(sub.train_index, mnist.train_index[:50])
    assert torch.equal(sub.val[0], mnist.val[0])  # val unchanged by the subset


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="cifar10"):
        load_dataset({"name": "imagenet"})


# --------------------------------------------------------------------------- CIFAR on disk


def _md5(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar10(root, per_batch=4, n_test=6):
    """A tiny CIFAR-10 in the real layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}.

    Keys are str: the real files are Python-2 pickles whose str keys torchvision
    reads back (``encoding="latin1"``) as str.
    """
    rng = np.random.default_rng(0)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        _dump(os.path.join(folder, f"data_batch_{i}"), {"batch_label": f"batch {i}", "data": x, "labels": y})
        train_x.append(x)
        train_y += y
    tx = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    ty = rng.integers(0, 10, n_test).tolist()
    _dump(os.path.join(folder, "test_batch"), {"data": tx, "labels": ty})
    _dump(os.path.join(folder, "batches.meta"), {"label_names": [f"c{i}" for i in range(10)]})
    return folder, (np.concatenate(train_x), np.array(train_y)), (tx, np.array(ty))


def _write_cifar100(root, n_train=30, n_test=7):
    rng = np.random.default_rng(1)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    x = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
    y = rng.integers(0, 100, n_train).tolist()
    tx = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    ty = rng.integers(0, 100, n_test).tolist()
    _dump(os.path.join(folder, "train"), {"data": x, "fine_labels": y, "coarse_labels": [0] * n_train})
    _dump(os.path.join(folder, "test"), {"data": tx, "fine_labels": ty, "coarse_labels": [0] * n_test})
    _dump(os.path.join(folder, "meta"), {"fine_label_names": [f"f{i}" for i in range(100)]})
    return folder, (x, np.array(y)), (tx, np.array(ty))


def _register_checksums(monkeypatch, cls, folder):
    """Point torchvision's integrity checks at our files' real md5s (no check is bypassed)."""
    monkeypatch.setattr(cls, "train_list", [[f, _md5(os.path.join(folder, f))] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, _md5(os.path.join(folder, f))] for f, _ in cls.test_list])
    meta = dict(cls.meta, md5=_md5(os.path.join(folder, cls.meta["filename"])))
    monkeypatch.setattr(cls, "meta", meta)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loads_real_format_and_pixels_round_trip(tmp_path, monkeypatch, name):
    from torchvision import datasets

    if name == "cifar10":
        cls, num_classes = datasets.CIFAR10, 10
        folder, (x, y), (tx, ty) = _write_cifar10(str(tmp_path))
    else:
        cls, num_classes = datasets.CIFAR100, 100
        folder, (x, y), (tx, ty) = _write_cifar100(str(tmp_path))
    _register_checksums(monkeypatch, cls, folder)

    s = load_dataset({"name": name, "root": str(tmp_path), "val_fraction": 0.2, "split_seed": 3})
    n = len(y)
    assert s.kind == "image" and s.num_classes == num_classes and s.input_shape == (3, 32, 32)
    facts = dataset_facts({"name": name})  # what the spec and the planner assume
    assert (facts.input_shape, facts.num_classes) == (s.input_shape, s.num_classes)
    assert len(s.val[0]) == round(0.2 * n) and len(s.train[0]) + len(s.val[0]) == n
    assert len(s.test[0]) == len(ty)
    for xs, ys in (s.train, s.val, s.test):
        assert xs.dtype == torch.uint8 and xs.shape[1:] == (3, 32, 32)
        assert ys.dtype == torch.int64
    # pixel values round-trip: the (N, 3072) rows are channel-major R|G|B planes of 32x32
    src = torch.from_numpy(x).reshape(-1, 3, 32, 32)
    assert torch.equal(s.train[0], src[s.train_index])
    assert torch.equal(s.val[0], src[s.val_index])
    assert torch.equal(s.train[1], torch.from_numpy(y)[s.train_index])
    assert torch.equal(s.test[0], torch.from_numpy(tx).reshape(-1, 3, 32, 32))
    assert torch.equal(s.test[1], torch.from_numpy(ty))
    assert not set(s.train_index.tolist()) & set(s.val_index.tolist())
    # standard CIFAR constants, per channel, [0, 1] scale
    assert s.mean.shape == (3, 1, 1) and s.std.shape == (3, 1, 1)
    assert 0.4 < float(s.mean.mean()) < 0.55


def test_cifar_corrupted_file_is_rejected(tmp_path):
    """Without our checksums torchvision's own md5 check refuses the files: it is really checked."""
    _write_cifar10(str(tmp_path))
    with pytest.raises(RuntimeError, match="corrupted"):
        load_dataset({"name": "cifar10", "root": str(tmp_path)})


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_cifar_without_download_is_a_clear_error(tmp_path, name, folder):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset({"name": name, "root": str(tmp_path / "nowhere"), "download": False})
    msg = str(err.value)
    assert os.path.join(str(tmp_path / "nowhere"), folder) in msg
    assert "download: true" in msg
    assert not (tmp_path / "nowhere").exists()  # nothing created, nothing fetched


# --------------------------------------------------------------------------- synthetic images


def test_synthetic_image_is_fixed_and_cifar_shaped():
    a = load_dataset({"name": "synthetic_image", "synthetic_size": 256})
    b = load_dataset({"name": "synthetic_image", "synthetic_size": 256})
    assert a.kind == "image" and a.num_classes == 10 and a.input_shape == (3, 32, 32)
    facts = dataset_facts({"name": "synthetic_image"})
    assert (facts.input_shape, facts.num_classes) == (a.input_shape, a.num_classes)
    assert a.train[0].dtype == torch.uint8 and a.train[1].dtype == torch.int64
    assert len(a.train[0]) + len(a.val[0]) == 256 and len(a.test[0]) > 0
    assert torch.equal(a.train[0], b.train[0]) and torch.equal(a.test[1], b.test[1])
    assert a.mean.shape == (3, 1, 1)
    torch.testing.assert_close(a.mean.flatten(), a.train[0].float().div(255).mean(dim=(0, 2, 3)))


# --------------------------------------------------------------------------- DeviceBatches


@pytest.fixture(scope="module")
def images() -> Splits:
    return load_dataset({"name": "synthetic_image", "synthetic_size": 512, "val_fraction": 0.0})


def _batches(s: Splits, seed=0, **kw):
    x, y = to_device(s.train, "cpu")
    opts = dict(shuffle=True, augment=True, drop_last=False)
    opts.update(kw)
    gen = torch.Generator().manual_seed(seed)
    return DeviceBatches(x, y, 64, generator=gen, mean=s.mean, std=s.std, **opts)


def test_every_sample_exactly_once_per_epoch():
    n = 103
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    ids = torch.arange(n)
    gen = torch.Generator().manual_seed(0)
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)
    db = DeviceBatches(x, ids, 16, shuffle=True, generator=gen, augment=True, mean=mean, std=std)
    assert len(db) == 7
    epochs = []
    for _ in range(2):
        seen = torch.cat([yb for _, yb in db])
        assert sorted(seen.tolist()) == list(range(n))
        epochs.append(seen)
    assert not torch.equal(epochs[0], epochs[1])  # a new permutation each epoch
    assert not torch.equal(epochs[0], ids)
    dropped = DeviceBatches(x, ids, 16, shuffle=True, generator=gen, augment=False, mean=mean, std=std, drop_last=True)
    assert len(dropped) == 6 and sum(len(yb) for _, yb in dropped) == 96
    ordered = DeviceBatches(x, ids, 16, shuffle=False, generator=None, augment=False, mean=mean, std=std)
    assert torch.equal(torch.cat([yb for _, yb in ordered]), ids)


def test_augmentation_shape_dtype_changes_and_reproducible(images):
    plain = _batches(images, shuffle=False, augment=False)
    aug = _batches(images, seed=5, shuffle=False, augment=True)
    same = _batches(images, seed=5, shuffle=False, augment=True)
    other = _batches(images, seed=6, shuffle=False, augment=True)
    changed = 0
    for (xp, yp), (xa, ya), (xs, _), (xo, _) in zip(plain, aug, same, other):
        assert xa.shape == xp.shape == (len(yp), 3, 32, 32)
        assert xa.dtype == torch.float32
        assert torch.equal(ya, yp)
        assert torch.equal(xa, xs)  # same seed, same crops and flips
        assert not torch.equal(xa, xo)
        changed += int((xa != xp).flatten(1).any(1).sum())
    assert changed > 0.9 * len(images.train[1])  # identity crop without flip has p = 1/162


def test_augmented_images_are_crops_and_flips_of_the_padded_input():
    x = torch.randint(1, 256, (12, 3, 32, 32), dtype=torch.uint8)  # no zeros: padding is visible
    out = D.random_crop_flip(x, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    kinds = set()
    for i in range(len(x)):
        match = [
            (oy, ox, flip)
            for oy in range(9)
            for ox in range(9)
            for flip in (False, True)
            if torch.equal(
                out[i],
                padded[i, :, oy : oy + 32, ox : ox + 32].flip(-1) if flip else padded[i, :, oy : oy + 32, ox : ox + 32],
            )
        ]
        assert match, f"sample {i} is not a 32x32 crop (optionally flipped) of the padded image"
        kinds.add(match[0][2])
    assert kinds == {False, True}  # both flipped and unflipped samples occur


def test_normalisation_gives_zero_mean_unit_std(images):
    xs = torch.cat([xb for xb, _ in _batches(images, augment=False)])
    per_channel_mean = xs.mean(dim=(0, 2, 3))
    per_channel_std = xs.std(dim=(0, 2, 3))
    assert per_channel_mean.abs().max() < 1e-3
    assert (per_channel_std - 1).abs().max() < 1e-3


def test_signals_only_normalised_never_augmented(mnist):
    x, y = to_device(mnist.train, "cpu")
    before = x.clone()
    db = DeviceBatches(
        x, y, 100, shuffle=False, generator=torch.Generator().manual_seed(0), augment=True,
        mean=mnist.mean, std=mnist.std,
    )
    out = torch.cat([xb for xb, _ in db])
    torch.testing.assert_close(out, (before - mnist.mean) / mnist.std)
    assert torch.equal(x, before)  # the resident data is never modified in place
    assert abs(float(out.mean())) < 1e-4


def test_channels_last_layout(images):
    xb, _ = next(iter(_batches(images, channels_last=True)))
    assert xb.is_contiguous(memory_format=torch.channels_last)
