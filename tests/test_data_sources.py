"""trainables.data beyond the embedded datasets: the registry's facts, image folders, torchvision
classes by name, streaming from disk, and sample indices (real files in their real formats, CPU, fast)."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from trainables import data as D
from trainables.data import (DatasetEntry, DatasetError, DatasetNotFound, LazyImages, Loaded, available_datasets,
                             batches, check_dataset, dataset_facts, dataset_options, load_dataset, register_dataset,
                             to_device)
from trainables.data.cifar import Cifar10
from trainables.loop import LocalHooks, run_trial
from trainables.options import Option

CLASSES = ("circle", "square", "stripes")


def _pattern(label: int, uid: int, rng: np.random.Generator, size=(16, 16)) -> np.ndarray:
    """A learnable RGB image of class `label`: its class's colour in one channel, noise in the
    others; pixel (0, 0) holds the image's id (R: id % 256, G: id // 256) so tests can trace it."""
    h, w = size
    img = rng.integers(0, 100, (h, w, 3), dtype=np.uint8)
    img[..., label] += 120
    img[0, 0, 0], img[0, 0, 1], img[0, 0, 2] = uid % 256, uid // 256, 0
    return img


def write_folder(root, per_class=80, val_per_class=0, test_per_class=0, size=(16, 16), odd_sizes=0, grey=False):
    """`root/{train,val,test}/<class>/<id>.png`; returns {id: (split, label)}. `odd_sizes` train images
    are written at another size (the loader resizes them)."""
    rng = np.random.default_rng(0)
    index, uid = {}, 0
    for split, n in (("train", per_class), ("val", val_per_class), ("test", test_per_class)):
        for label, name in enumerate(CLASSES):
            if not n:
                continue
            folder = os.path.join(root, split, name)
            os.makedirs(folder)
            for i in range(n):
                odd = split == "train" and label == 2 and i >= n - odd_sizes
                img = _pattern(label, uid, rng, (size[0] + 5, size[1] + 3) if odd else size)
                pil = Image.fromarray(img).convert("L") if grey else Image.fromarray(img)
                pil.save(os.path.join(folder, f"{uid:05d}.png"))
                index[uid] = (split, label)
                uid += 1
    return index


def _ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 1, 0, 0].long()).tolist()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return str(root), write_folder(str(root))


@pytest.fixture(scope="module")
def folder_with_val(tmp_path_factory):
    root = tmp_path_factory.mktemp("images_val")
    return str(root), write_folder(str(root), per_class=60, val_per_class=10, test_per_class=12)


def _cfg(root, **kw):
    return {"name": "image_folder", "root": root, "num_workers": 0, **kw}


# --------------------------------------------------------------------------- image folders


def test_image_folder_without_val_or_test(folder):
    root, index = folder
    cfg = _cfg(root)
    facts = dataset_facts(cfg)
    # 240 images in train/; no test/: 20 % (48) held out as test, then 10 % of the other 192 carved as val
    assert (facts.kind, facts.input_shape, facts.num_classes) == ("image", (3, 16, 16), 3)
    assert facts.class_names == CLASSES  # the sub-folders of train/, sorted
    assert (facts.n_train, facts.n_val, facts.n_test) == (173, 19, 48)
    assert facts.resident and facts.mean is None  # normalised with the training split's statistics
    assert "held out from train/" in facts.to_json()["test"]

    s = load_dataset(cfg)
    assert (len(s.train[1]), len(s.val[1]), len(s.test[1])) == (173, 19, 48)
    assert s.train[0].dtype == torch.uint8 and s.train[0].shape[1:] == (3, 16, 16) and not s.streaming
    ids = {part: _ids(xy[0]) for part, xy in (("train", s.train), ("val", s.val), ("test", s.test))}
    assert sorted(sum(ids.values(), [])) == sorted(index)  # every file exactly once, in one split
    for part, xy in (("train", s.train), ("val", s.val), ("test", s.test)):
        assert [index[i][1] for i in ids[part]] == xy[1].tolist()  # labels are the class folders
    # the pixels are the PNG's pixels
    some = ids["val"][0]
    split, label = index[some]
    png = np.array(Image.open(os.path.join(root, split, CLASSES[label], f"{some:05d}.png")))
    assert torch.equal(s.val[0][0], torch.from_numpy(png).permute(2, 0, 1))
    torch.testing.assert_close(s.mean.flatten(), s.train[0].float().div(255).mean(dim=(0, 2, 3)))

    # deterministic; another split seed moves the validation carve, never the held-out test images
    again = load_dataset(cfg)
    assert torch.equal(again.train[0], s.train[0]) and torch.equal(again.test[1], s.test[1])
    other = load_dataset(_cfg(root, split_seed=5))
    assert _ids(other.test[0]) == ids["test"] and set(_ids(other.val[0])) != set(ids["val"])
    assert dataset_facts(_cfg(root, test_fraction=0)).n_test == 0


def test_image_folder_with_val_and_test(folder_with_val):
    root, index = folder_with_val
    facts = dataset_facts(_cfg(root, train_subset=100))
    assert (facts.n_train, facts.n_val, facts.n_test) == (100, 30, 36) and not facts.val_carved
    s = load_dataset(_cfg(root, train_subset=100))
    assert [index[i][0] for i in _ids(s.val[0])] == ["val"] * 30  # val/ is the validation split
    assert [index[i][0] for i in _ids(s.test[0])] == ["test"] * 36
    assert {index[i][0] for i in _ids(s.train[0])} == {"train"} and len(s.val_index) == 0


def test_image_folder_resizes_and_reads_grey(tmp_path):
    write_folder(str(tmp_path / "rgb"), per_class=6, odd_sizes=2)
    s = load_dataset(_cfg(str(tmp_path / "rgb"), image_size=12, test_fraction=0))
    assert s.input_shape == (3, 12, 12) and s.train[0].shape[1:] == (3, 12, 12)
    s = load_dataset(_cfg(str(tmp_path / "rgb"), image_size=[16, 16], test_fraction=0))
    assert s.input_shape == (3, 16, 16)  # the two 21x19 images were resized to fit
    write_folder(str(tmp_path / "grey"), per_class=6, grey=True)
    g = load_dataset(_cfg(str(tmp_path / "grey")))
    assert g.input_shape == (1, 16, 16) and g.mean.shape == (1, 1, 1)
    assert load_dataset(_cfg(str(tmp_path / "grey"), channels=3)).input_shape == (3, 16, 16)


def test_image_folder_problems_are_one_line_naming_the_file(tmp_path):
    assert "dataset.root is required" in check_dataset({"name": "image_folder"})[0]
    (problem,) = check_dataset(_cfg(str(tmp_path / "nowhere")))
    assert os.path.join(str(tmp_path / "nowhere"), "train") in problem and "\n" not in problem
    with pytest.raises(FileNotFoundError):
        load_dataset(_cfg(str(tmp_path / "nowhere")))
    write_folder(str(tmp_path / "a"), per_class=3, val_per_class=2)
    os.makedirs(tmp_path / "a" / "val" / "unicorn")
    assert "unicorn" in check_dataset(_cfg(str(tmp_path / "a")))[0]
    write_folder(str(tmp_path / "b"), per_class=3)
    Image.new("RGB", (4, 4)).save(tmp_path / "b" / "train" / "loose.png")
    assert "outside class folders" in check_dataset(_cfg(str(tmp_path / "b")))[0]
    write_folder(str(tmp_path / "c"), per_class=3)
    (tmp_path / "c" / "train" / "square" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="broken.png"):
        load_dataset(_cfg(str(tmp_path / "c"), test_fraction=0))


def test_image_folder_augmentation_options(folder):
    root, _ = folder
    s = load_dataset(_cfg(root))
    assert s.augmentation == D.Augmentation(padding=2, flip=True)  # an eighth of 16 pixels
    x = s.train[0][:64]
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for kind, crops, flips in (("crop", True, False), ("flip", False, True)):
        aug = load_dataset(_cfg(root, augment=kind)).augmentation
        out = D.random_crop_flip(x, torch.Generator().manual_seed(0), aug.padding, aug.flip)
        seen_flip = seen_shift = False
        for i in range(len(x)):
            options = [(oy, ox, f) for oy in range(5 if crops else 1) for ox in range(5 if crops else 1)
                       for f in ((False, True) if flips else (False,))
                       if torch.equal(out[i], (padded[i, :, oy:oy + 16, ox:ox + 16] if crops else x[i]).flip(-1)
                                      if f else (padded[i, :, oy:oy + 16, ox:ox + 16] if crops else x[i]))]
            assert options, f"{kind}: sample {i} is not what {kind} makes"
            seen_flip |= all(o[2] for o in options)
            seen_shift |= all((o[0], o[1]) != ((2, 2) if crops else (0, 0)) for o in options)
        assert seen_flip == flips and seen_shift == crops
    assert load_dataset(_cfg(root, augment="none")).augmentation is None


def _loop_config(dataset: dict, **over) -> dict:
    cfg = {
        "study": "t", "stage": "adhoc", "method": "scratch", "seed": 0, "dataset": dataset,
        "student": {"family": "mlp", "size": 32},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.01, "weight_decay": 0.0},
        "runtime": {"device": "cpu"}, "hp": {},
    }
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def resident_run(folder):
    return run_trial(_loop_config(_cfg(folder[0])))


def test_image_folder_trains_through_the_loop(resident_run):
    rows = resident_run.rows
    last = rows[-1]
    assert last["epoch"] == 3 and last["dataset"] == "image_folder"
    assert last["val_acc"] > 0.6 and last["test_acc"] > 0.6, last  # 3 classes: chance is 1/3
    assert rows[0]["train_loss"] > last["train_loss"]


# --------------------------------------------------------------------------- streaming from disk


def _epoch(xy, s, seed, **kw):
    gen = torch.Generator().manual_seed(seed)
    return list(batches(*xy, 32, shuffle=True, generator=gen, augment=s.augmentation, mean=s.mean, std=s.std, **kw))


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_gives_the_resident_batches(folder, workers):
    root, _ = folder
    resident = load_dataset(_cfg(root))
    streamed = load_dataset(_cfg(root, stream=True, num_workers=workers))
    assert streamed.streaming and isinstance(streamed.train[0], LazyImages) and not dataset_facts(
        _cfg(root, stream=True)).resident
    assert streamed.train[0].shape == resident.train[0].shape
    assert torch.equal(streamed.mean, resident.mean) and torch.equal(streamed.std, resident.std)
    assert torch.equal(streamed.train[1], resident.train[1])
    assert torch.equal(streamed.test[0].to_tensor(), resident.test[0])
    a = _epoch(to_device(resident.train, "cpu"), resident, 3, with_index=True)
    b = _epoch(to_device(streamed.train, "cpu"), streamed, 3, with_index=True)
    assert len(a) == len(b) == 6
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):  # same order, same crops and flips, same pixels
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)


def test_streaming_is_chosen_by_the_memory_budget(folder):
    root, _ = folder
    nbytes = 240 * 3 * 16 * 16
    assert dataset_facts(_cfg(root)).resident_bytes == nbytes
    assert dataset_facts(_cfg(root, memory_budget_gb=nbytes / 2**30)).resident
    assert not dataset_facts(_cfg(root, memory_budget_gb=(nbytes - 1) / 2**30)).resident
    assert dataset_facts(_cfg(root, stream=False, memory_budget_gb=0)).resident
    assert D.identity_config(_cfg(root, stream=True, memory_budget_gb=1)) == {"name": "image_folder"}
    # what identities hashed before the registry (the spec's dataset without root and download) is unchanged
    old = {"name": "mnist1d", "root": root, "download": False, "val_fraction": 0.1, "split_seed": 0}
    assert D.identity_config(old) == {"name": "mnist1d", "val_fraction": 0.1, "split_seed": 0}


def test_streamed_trial_equals_the_resident_one(folder, resident_run):
    streamed = run_trial(_loop_config(_cfg(folder[0], stream=True, num_workers=1)))
    for a, b in zip(resident_run.rows, streamed.rows):
        assert (a["epoch"], a["val_acc"], a["test_acc"]) == (b["epoch"], b["val_acc"], b["test_acc"])
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)


# --------------------------------------------------------------------------- sample indices


def test_indices_name_each_sample_once_per_epoch():
    n = 70
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1).expand(n, 1, 4).contiguous()
    y = torch.arange(n) % 3
    mean, std = torch.zeros(1, 1), torch.ones(1, 1)
    for shuffle in (True, False):
        seen = []
        for xb, yb, ib in batches(x, y, 16, shuffle=shuffle, generator=torch.Generator().manual_seed(0),
                                  augment=False, mean=mean, std=std, with_index=True):
            assert ib.dtype == torch.int64 and torch.equal(xb[:, 0, 0].long(), ib) and torch.equal(yb, y[ib])
            seen += ib.tolist()
        assert sorted(seen) == list(range(n)) and (seen != list(range(n))) == shuffle
    # a batch without indices is the plain pair, from the same draws
    plain = list(batches(x, y, 16, shuffle=True, generator=torch.Generator().manual_seed(0), augment=False,
                         mean=mean, std=std))
    assert len(plain[0]) == 2


def test_streamed_indices_point_at_the_training_rows(folder):
    s = load_dataset(_cfg(folder[0], stream=True))
    whole = s.train[0].to_tensor()
    for xb, yb, ib in _epoch(to_device(s.train, "cpu"), s, 1, with_index=True):
        del xb
        assert torch.equal(yb, s.train[1][ib])
        assert _ids(whole[ib]) == _ids(s.train[0][ib].to_tensor())


def test_a_method_that_asks_gets_indices_and_the_training_size(monkeypatch, data_root):
    from trainables import loop
    from trainables.methods.base import Method, Step

    seen: dict = {"index": [], "n": None}

    class IndexProbe(Method):
        needs_sample_index = True

        def __init__(self, ctx, hp):
            super().__init__(ctx, hp)
            self.student = ctx.build_model(ctx.student)
            seen["n"] = ctx.num_train_samples

        def training_step(self, x, y, index):
            seen["index"].append(index.clone())
            logits = self.student(x)
            return Step(terms={"ce": torch.nn.functional.cross_entropy(logits, y)}, logits=logits)

    monkeypatch.setattr(loop, "get_method", lambda name: IndexProbe)
    cfg = {"study": "t", "stage": "adhoc", "method": "probe", "seed": 0,
           "dataset": {"name": "mnist1d", "num_samples": 1000, "root": data_root},
           "student": {"family": "mlp", "size": 8}, "train": {"epochs": 2, "batch_size": 64, "lr": 0.01},
           "runtime": {"device": "cpu"}, "hp": {}}
    run_trial(cfg, LocalHooks())
    n = seen["n"]
    assert n == dataset_facts(cfg["dataset"]).n_train == 720
    per_epoch = len(seen["index"]) // 2
    for e in range(2):
        idx = torch.cat(seen["index"][e * per_epoch:(e + 1) * per_epoch])
        assert sorted(idx.tolist()) == list(range(n))


# --------------------------------------------------------------------------- torchvision classes


def _idx(path, array: np.ndarray, magic: int) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_fashion_mnist(root, n_train=90, n_test=30):
    """FashionMNIST's raw idx files: root/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte."""
    rng = np.random.default_rng(2)
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        _idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), x, 0x803)
        _idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), y, 0x801)
        out[prefix] = (x, y)
    return out


def test_torchvision_class_from_its_files(tmp_path):
    from torchvision import datasets

    written = write_fashion_mnist(str(tmp_path))
    cfg = {"name": "torchvision", "class": "FashionMNIST", "root": str(tmp_path), "val_fraction": 0.2}
    facts = dataset_facts(cfg)
    assert (facts.input_shape, facts.num_classes, facts.class_names) == ((1, 28, 28), 10,
                                                                         tuple(datasets.FashionMNIST.classes))
    assert (facts.n_train, facts.n_val, facts.n_test) == (72, 18, 30)
    s = load_dataset(cfg)
    x, y = written["train"]
    assert torch.equal(s.train[0], torch.from_numpy(x)[s.train_index].unsqueeze(1))
    assert torch.equal(s.train[1], torch.from_numpy(y).long()[s.train_index])
    assert torch.equal(s.test[0][:, 0], torch.from_numpy(written["t10k"][0]))
    streamed = load_dataset({**cfg, "stream": True, "image_size": 20})  # resized when decoded
    assert streamed.train[0].shape == (72, 1, 20, 20) and streamed.train[0][:3].to_tensor().shape == (3, 1, 20, 20)


def test_torchvision_split_class_and_problems(tmp_path, monkeypatch):
    import scipy.io
    from torchvision import datasets

    rng = np.random.default_rng(3)
    files = {}
    for split, n in (("train", 40), ("test", 12)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # SVHN's label 10 is the digit 0
        path = tmp_path / f"{split}_32x32.mat"
        scipy.io.savemat(str(path), {"X": x, "y": y})
        files[split] = (x, y)
    monkeypatch.setattr(datasets.SVHN, "split_list", {
        s: [u, f, hashlib.md5((tmp_path / f).read_bytes()).hexdigest() if s in files else md5]
        for s, (u, f, md5) in datasets.SVHN.split_list.items()})
    cfg = {"name": "torchvision", "class": "SVHN", "root": str(tmp_path)}
    s = load_dataset(cfg)
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10 and s.class_names is None
    assert len(s.train[1]) + len(s.val[1]) == 40 and len(s.test[1]) == 12
    labels = files["test"][1].reshape(-1).astype(np.int64) % 10
    assert s.test[1].tolist() == labels.tolist()
    assert torch.equal(s.test[0][5], torch.from_numpy(files["test"][0][..., 5]).permute(2, 0, 1))

    # problems: one line each, naming the field or the files, nothing downloaded
    assert "torchvision.datasets has no dataset class 'Nope'" in check_dataset({**cfg, "class": "Nope"})[0]
    (missing,) = check_dataset({"name": "torchvision", "class": "KMNIST", "root": str(tmp_path / "empty")})
    assert "download: true" in missing and "KMNIST" in missing and not (tmp_path / "empty").exists()
    assert "val_split" in check_dataset({"name": "torchvision", "class": "FashionMNIST", "root": str(tmp_path),
                                         "val_split": "val"})[0]
    assert "test" in check_dataset({**cfg, "test_split": "nonsense"})[0]


# --------------------------------------------------------------------------- the registry


def _write_cifar10(root, per_batch=4, n_test=6):
    import pickle

    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(0)

    def dump(name, obj):
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(obj, f, protocol=2)

    for i in range(1, 6):
        dump(f"data_batch_{i}", {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                                 "labels": rng.integers(0, 10, per_batch).tolist()})
    dump("test_batch", {"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                        "labels": rng.integers(0, 10, n_test).tolist()})
    dump("batches.meta", {"label_names": list(D.cifar.CIFAR10_CLASSES)})
    return folder


@pytest.fixture
def every_builtin(tmp_path, folder, folder_with_val, data_root, monkeypatch):
    """One small configuration of every built-in entry, its files written in their real format."""
    from torchvision import datasets

    cifar = _write_cifar10(str(tmp_path / "cifar"))
    for attr in ("train_list", "test_list"):
        monkeypatch.setattr(datasets.CIFAR10, attr, [[f, hashlib.md5(open(os.path.join(cifar, f), "rb").read())
                                                      .hexdigest()] for f, _ in getattr(datasets.CIFAR10, attr)])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {**datasets.CIFAR10.meta, "md5": None})
    # the entry states CIFAR's real sizes; this copy is smaller
    monkeypatch.setattr(Cifar10, "train_size", 20)
    monkeypatch.setattr(Cifar10, "test_size", 6)
    write_fashion_mnist(str(tmp_path / "tv"))
    return {
        "mnist1d": [{"name": "mnist1d", "root": data_root, "num_samples": 400, "train_subset": 100}],
        "cifar10": [{"name": "cifar10", "root": str(tmp_path / "cifar"), "val_fraction": 0.25}],
        "cifar100": [],  # its loader is cifar10's (the CIFAR test in test_data.py reads its format)
        "synthetic_image": [{"name": "synthetic_image", "synthetic_size": 128, "augment": "crop"}],
        "image_folder": [_cfg(folder[0]), _cfg(folder_with_val[0], stream=True),
                         _cfg(folder[0], mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])],
        "torchvision": [{"name": "torchvision", "class": "FashionMNIST", "root": str(tmp_path / "tv")}],
    }


def test_facts_equal_what_loading_gives_for_every_builtin(every_builtin):
    assert set(every_builtin) == set(available_datasets())  # a new built-in entry belongs here too
    for name, cfgs in every_builtin.items():
        for cfg in cfgs:
            f, s = dataset_facts(cfg), load_dataset(cfg)
            assert (f.kind, f.input_shape, f.num_classes, f.class_names) == (
                s.kind, s.input_shape, s.num_classes, s.class_names), cfg
            assert (f.n_train, f.n_val, f.n_test) == (len(s.train[1]), len(s.val[1]), len(s.test[1])), cfg
            assert f.augmentation == s.augmentation and f.resident == (not s.streaming), cfg
            if f.mean is not None:
                assert s.mean.flatten().tolist() == pytest.approx(list(f.mean)), cfg
                assert s.std.flatten().tolist() == pytest.approx(list(f.std)), cfg
            json.dumps(f.to_json())  # what the study records


def test_a_plugin_dataset_registers_like_the_builtins():
    @register_dataset("test_two_blobs")
    class TwoBlobs(DatasetEntry):
        options = {"n": Option(60, ("integer",), minimum=10)}

        def load(self, cfg):
            g = torch.Generator().manual_seed(0)
            n = int(cfg.get("n", 60))
            y = torch.arange(n) % 2
            x = (torch.randn(n, 1, 8, generator=g) + 3 * y[:, None, None]).float()
            return Loaded(train=(x, y), test=(x[:10], y[:10]))

    try:
        assert "test_two_blobs" in available_datasets() and set(dataset_options("test_two_blobs")) == {"n"}
        f, s = dataset_facts({"name": "test_two_blobs", "n": 50}), load_dataset({"name": "test_two_blobs", "n": 50})
        assert (f.kind, f.input_shape, f.num_classes, f.n_train, f.n_val) == ("signal", (1, 8), 2, 45, 5)
        assert (s.kind, s.input_shape, len(s.train[1])) == ("signal", (1, 8), 45)
        with pytest.raises(ValueError, match="registered twice"):
            register_dataset("test_two_blobs")(type("Other", (DatasetEntry,), {}))
        with pytest.raises(TypeError):
            register_dataset("test_function")(lambda cfg: None)
        with pytest.raises(ValueError, match="common options"):
            register_dataset("test_clash")(type("Clash", (DatasetEntry,), {"options": {"root": "x"}}))
    finally:
        from trainables.data import registry

        registry._REGISTRY.pop("test_two_blobs", None)


def test_report_header_reads_the_recorded_facts(folder):
    from analysis.report import header_facts

    df = pd.DataFrame({"study": ["s"], "dataset": ["image_folder"], "role": ["student"], "student_arch": ["mlp-32"],
                       "student_params": [1000.0], "teacher_size": [None], "teacher_arch": [None],
                       "teacher_params": [None], "code_version": ["v"], "timestamp": [pd.Timestamp.now(tz="UTC")],
                       "stage": ["search"], "trial_id": ["t0"], "generation": [0], "epoch": [1],
                       "epoch_time_s": [1.0], "device": ["cpu"], "node": ["n"]})
    facts = dict(header_facts(df, {"dataset": _cfg(folder[0])}, dataset_facts(_cfg(folder[0])).to_json()))
    assert facts["splits"].startswith("train 173 / val 19 / test 48")
    assert "held out from train/" in facts["splits"] and "image 3x16x16, 3 classes" in facts["input"]
    old = dict(header_facts(df, {"dataset": {"name": "mnist1d", "num_samples": 1000}}))  # a study without them
    assert old["splits"].startswith("train 720 / val 80 / test 200")
