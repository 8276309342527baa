"""Teachers you already have: a weights file imported into the zoo as a teacher of the ladder.

One real study on a local Ray (module fixture `imported_study`) serves most tests: a ladder of
mlp sizes 8 and 32 where 8 is trained and 32 is imported from a checkpoint the test writes (a
training checkpoint with the state dict under ``state_dict`` and DataParallel's ``module.``
prefix), distilled from by KD's fixed configuration, confirmed on one seed (four trials in all:
two teachers, the baseline, KD). The other tests need no Ray: the graph and the keys, the
preflight's one line per bad file, the checks of an imported entry on resume, reading weights
files.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from study import runner as runner_mod
from study.cli import main
from study.folder import StudyFolder
from study.graph import plan
from study.preflight import preflight, preflight_warnings
from study.spec import SpecError, load_spec, parse_spec
from study.zoo import key_of, teacher_jobs
from trainables.imported import WeightsError, fit, state_dict_of
from trainables.loop import LocalHooks, run_trial

from .conftest import micro_spec


class _Custom:
    """A Python object in a pickle: weights-only loading refuses it (nothing of it runs)."""


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the runner starts or joins Ray."""
    def refuse(*a, **k):
        raise AssertionError("Ray was started")
    monkeypatch.setattr(runner_mod, "init_ray", refuse)


def _spec_dict(folder: Path, data_root: str, weights: dict | None = None, sizes=(8, 32)) -> dict:
    """The ladder 8, 32 (trained for 2 epochs unless imported); KD's fixed configuration confirmed at 32
    only, unsearched (the fewest trials that distil from an imported teacher beside a trained one: 4)."""
    raw = micro_spec(folder, data_root,
                     teachers={"family": "mlp", "sizes": list(sizes), "seeds": 1, "epochs": 2},
                     train={"epochs": 2, "batch_size": 128, "lr": 0.01},
                     search={"budget": "stratified", "scheduler": "none", "max_concurrent": 1},
                     methods={"kd": {"trials": 0, "teacher_sizes": [max(sizes)]}}, confirm={"seeds": 1, "top_k": 1})
    if weights:
        raw["teachers"]["weights"] = weights
    return raw


def _write(folder: Path, raw: dict) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _train(spec, size, folder: Path, epochs: int = 3) -> dict:
    """A state dict of an mlp teacher trained here for a few epochs (no Ray), as a user's own would be."""
    cfg = {"study": "own", "stage": "teachers", "method": "scratch", "seed": 0, "role": "teacher",
           "dataset": dict(spec.dataset), "student": {"family": "mlp", "size": size},
           "train": {**spec.train, "epochs": epochs}, "runtime": {}, "hp": {},
           "export": {"uri": str(folder), "epochs": [], "meta": {}}}
    run_trial(cfg, LocalHooks())
    return torch.load(folder / "model.pt", weights_only=True)["model"]


def _evaluate(state: dict, cfg: dict, dataset: dict) -> tuple[float, float]:
    """(val, test) accuracy of a model with these weights, computed here without the study's code path."""
    from trainables import data as data_mod
    from trainables.models import build_model

    splits = data_mod.load_dataset(dataset)
    model = build_model(cfg, splits.input_shape, splits.num_classes)
    model.load_state_dict(state)
    model.eval()
    accs = []
    for x, y in (splits.val, splits.test):
        correct = 0
        with torch.no_grad():
            for xb, yb in data_mod.batches(x, y, 1024, shuffle=False, generator=None, augment=False,
                                           mean=splits.mean, std=splits.std):
                correct += int((model(xb).argmax(1) == yb).sum())
        accs.append(correct / len(y))
    return accs[0], accs[1]


@pytest.fixture(scope="module")
def imported_study(tmp_path_factory, data_root, ray_local):
    """A finished study importing its size-32 teacher: (study folder, spec file, the teacher's weights, spec)."""
    t0 = time.time()
    folder = tmp_path_factory.mktemp("imported")
    spec0 = parse_spec(_spec_dict(folder, data_root))
    own = _train(spec0, 32, folder / "own")
    (folder / "weights").mkdir()
    checkpoint = {"state_dict": {f"module.{k}": v for k, v in own.items()}, "epoch": 3, "best_acc": 0.2}
    torch.save(checkpoint, folder / "weights" / "t32.pt")
    path = _write(folder, _spec_dict(folder, data_root, {32: "weights/t32.pt"}))
    t1 = time.time()
    assert main(["run", str(path), "--no-report"]) == 0
    spec = load_spec(path)
    print(f"imported_study: teacher file {t1 - t0:.1f} s, study {time.time() - t1:.1f} s")
    return Path(spec.study_uri), path, own, spec


def _rows(study: Path):
    from analysis import load

    return load(study)


def test_a_ladder_mixes_trained_and_imported_teachers(tmp_path, data_root):
    """The graph trains 8 and imports 32; 8 keeps the names it has without `weights`; 32's key is its
    file's content (the same file elsewhere is the same teacher, an edited one another)."""
    plain = parse_spec(_spec_dict(tmp_path, data_root))
    weights = tmp_path / "w.pt"
    torch.save({"fc.weight": torch.ones(2)}, weights)
    spec = parse_spec(_spec_dict(tmp_path, data_root, {32: str(weights)}))
    teachers = {e.label: e for e in plan(spec) if e.stage == "teachers"}
    assert (teachers["t8"].method, teachers["t32"].method) == ("scratch", "import")
    assert teachers["t32"].jobs[0]["student"] == {"family": "mlp", "size": 32} and teachers["t32"].max_t == 1
    before = {e.label: e.name for e in plan(plain) if e.stage == "teachers"}
    assert teachers["t8"].name == before["t8"] and teachers["t32"].name != before["t32"]
    keys = {j["size"]: j for j in teacher_jobs(spec)}
    plain_keys = {j["size"]: j["key"] for j in teacher_jobs(plain)}
    assert keys[8]["key"] == plain_keys[8] and keys[32]["key"] != plain_keys[32]
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert keys[32]["content"]["imported"] == {"sha256": sha, "format": "auto"}
    assert str(weights) not in json.dumps(keys[32]["content"])
    assert spec.raw["teachers"]["weights"][32] == {"path": str(weights), "sha256": sha}  # what the study records
    elsewhere = tmp_path / "copy" / "renamed.pt"
    elsewhere.parent.mkdir()
    shutil.copy(weights, elsewhere)
    moved = parse_spec(_spec_dict(tmp_path, data_root, {32: str(elsewhere)}))
    assert {j["size"]: j["key"] for j in teacher_jobs(moved)}[32] == keys[32]["key"]
    def named(s):
        return {e.name.rsplit("-", 1)[0]: e.name for e in plan(s)}

    names = named(spec)
    assert named(moved) == names  # the same experiments (the path is no identity)
    torch.save({"fc.weight": torch.zeros(2)}, elsewhere)  # edited: another teacher
    edited = parse_spec(_spec_dict(tmp_path, data_root, {32: str(elsewhere)}))
    assert {j["size"]: j["key"] for j in teacher_jobs(edited)}[32] != keys[32]["key"]
    renamed = named(edited)
    assert renamed.keys() == names.keys() and renamed["teachers-t8"] == names["teachers-t8"]
    assert {k for k in names if renamed[k] != names[k]} == {"teachers-t32", "confirm-kd-t32"}, names  # and its users
    # a method that distils from early teacher epochs cannot use an imported teacher
    raw = _spec_dict(tmp_path, data_root, {32: str(weights)})
    raw["teachers"]["export_epochs"] = [1]
    raw["methods"] = {"eskd": {"trials": 1, "teacher_sizes": [32]}}
    with pytest.raises(SpecError, match=r"methods.eskd.teacher_sizes: the teacher of size 32 is imported"):
        parse_spec(raw)


def test_the_imported_teacher_is_evaluated_on_the_studys_splits_not_trained(imported_study):
    study, _, own, spec = imported_study
    job = {j["size"]: j for j in teacher_jobs(spec)}[32]
    entry = study / "zoo" / job["key"]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["origin"] == "imported" and meta["epochs"] == 0
    assert key_of(meta["key_content"]) == job["key"] == entry.name  # the swapped-folder check's record
    source = hashlib.sha256((study.parent.parent / "weights" / "t32.pt").read_bytes()).hexdigest()
    assert meta["source"] == {"file": "t32.pt", "sha256": source, "format": "auto",
                              "found": "under 'state_dict', prefix 'module.' removed"}
    staged = torch.load(entry / "model.pt", weights_only=True)["model"]
    assert meta["sha256"] == hashlib.sha256((entry / "model.pt").read_bytes()).hexdigest()
    assert staged.keys() == own.keys() and all(torch.equal(staged[k], own[k]) for k in own)
    val, test = _evaluate(own, {"family": "mlp", "size": 32}, spec.dataset)
    assert (meta["val_acc"], meta["acc"]) == (pytest.approx(val, abs=1e-12), pytest.approx(test, abs=1e-12))
    assert test > 0.15  # it learned something (10 classes): distilling from it means something
    df = _rows(study)
    mine = df[(df["stage"] == "teachers") & (df["method"] == "import")]
    assert len(mine) == 1, mine
    row = mine.iloc[0]
    assert (row["epoch"], row["role"], row["teacher_origin"], row["status"]) == (0, "teacher", "imported", "ok")
    assert (row["val_acc"], row["test_acc"], row["teacher_size"]) == (meta["val_acc"], meta["acc"], 32.0)
    assert (row["train_loss"] != row["train_loss"]) and row["lr"] != row["lr"]  # nothing trained: no recipe
    trained = df[(df["stage"] == "teachers") & (df["method"] == "scratch")]
    assert set(trained["teacher_origin"]) == {"trained"} and trained["epoch"].max() == 2


def test_kd_distils_from_the_imported_teacher_and_the_results_say_which_is_which(imported_study):
    study, _, _, spec = imported_study
    meta = json.loads((study / "zoo" / {j["size"]: j for j in teacher_jobs(spec)}[32]["key"] / "meta.json").read_text())
    df = _rows(study)
    kd = df[(df["method"] == "kd") & (df["role"] == "student")]
    assert set(kd["stage"]) == {"confirm"} and set(kd["status"]) == {"ok"}
    assert set(kd["teacher_size"]) == {32.0} and set(kd["teacher_origin"]) == {"imported"}
    assert set(kd["teacher_acc"]) == {meta["acc"]}
    from analysis import write_report
    from analysis.status import status_table

    text = status_table(study)
    line = next(x for x in text.splitlines() if x.split()[:2] == ["teachers", "import"])
    assert "imported" in line.split() and any(x.split()[:2] == ["confirm", "kd"] and "imported" in x.split()
                                              for x in text.splitlines()), text
    html = Path(write_report(study, png=False)).read_text()
    assert "32 (imported)" in html  # the capacity-gap chart's tick and the results table


def test_bad_weights_are_named_one_line_each_before_ray(imported_study, tmp_path, data_root, capsys, no_ray):
    """Missing, not weights-only, not torch, cut short, no state dict, wrong shapes, another class count."""
    _, _, own, spec = imported_study

    (tmp_path / "object.pt").write_bytes(pickle.dumps({"model": _Custom()}))
    (tmp_path / "text.pt").write_text("not weights")
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "no_state.pt")
    torch.save(own, tmp_path / "size32.pt")  # a size-32 teacher's weights given for size 16
    (tmp_path / "cut.pt").write_bytes((tmp_path / "size32.pt").read_bytes()[:-200])  # a copy cut short
    head = {**own, "classifier.weight": torch.zeros(5, 32), "classifier.bias": torch.zeros(5)}  # a 5-class head
    torch.save({"model": head}, tmp_path / "five.pt")
    sizes = [8, 12, 16, 24, 32, 48, 64, 96]
    weights = {8: "missing.pt", 12: "object.pt", 16: "size32.pt", 24: "text.pt", 32: "five.pt",
               48: {"path": "no_state.pt"}, 64: {"path": "size32.pt", "key": "model"}, 96: "cut.pt"}
    path = _write(tmp_path, _spec_dict(tmp_path, data_root, weights, sizes=sizes))
    t0 = time.time()
    assert main(["run", str(path), "--no-report"]) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("kdstudy: teachers.weights.")]
    assert len(lines) == 8 and "Traceback" not in err, err
    by = {int(x.split(".")[2].split(":")[0]): x for x in lines}
    assert "no such file" in by[8] and str(tmp_path / "missing.pt") in by[8]
    assert "weights-only load refuses" in by[12]
    assert "do not fit mlp-2x16" in by[16] and "[32" in by[16]
    assert "is not a file torch.save wrote" in by[24]
    assert "classify 5 classes" in by[32] and "the dataset has 10" in by[32] and "fine-tune" in by[32]
    assert "holds no state dict" in by[48] and "epoch, optimizer" in by[48]
    assert "has no entry 'model'" in by[64]
    assert "cut.pt is damaged or truncated" in by[96]
    assert main(["validate", str(path)]) == 2  # validate reads and fits the files too, the same lines
    err = capsys.readouterr().err
    assert sorted(x.split(": ", 1)[1] for x in err.splitlines()) == sorted(x.split(": ", 1)[1] for x in lines), err
    print(f"preflight of 8 weights files: {time.time() - t0:.1f} s")


def test_imported_entries_are_checked_like_trained_ones(imported_study, tmp_path, capsys, no_ray):
    """Swapped zoo folders, an edited weights file (run and resume) and a deleted one after the import.
    On the shared study itself (a copy's recorded spec folder would still be the original's), each
    change undone before the next."""
    study, path, own, spec = imported_study
    keys = {j["size"]: j["key"] for j in teacher_jobs(spec)}
    imported, trained = study / "zoo" / keys[32], study / "zoo" / keys[8]
    weights = path.parent / "weights" / "t32.pt"
    data = weights.read_bytes()
    try:
        # the weights file deleted after the import: the study's zoo entry stands for it (sha256 recorded)
        weights.unlink()
        assert preflight(load_spec(path), str(study)) == [f"teachers.weights.32: no such file: {weights}"]
        assert preflight(StudyFolder(str(study)).saved_spec(), str(study)) == []  # resume: nothing needs the file
        weights.write_bytes(data)

        # swapped with the trained teacher's folder (weights and meta together): named before any trial
        tmp = study / "zoo" / "swap"
        imported.rename(tmp), trained.rename(imported), tmp.rename(trained)
        try:
            assert main(["resume", str(study), "--no-report"]) == 2
        finally:
            imported.rename(tmp), trained.rename(imported), tmp.rename(trained)
        err = capsys.readouterr().err
        assert f"zoo entry {imported}" in err and "renamed or swapped" in err and "Traceback" not in err, err

        # the weights file edited: `run` of the spec is another study (the sha256 differs) ...
        torch.save({k: v + 1 for k, v in own.items()}, weights)
        assert main(["run", str(path), "--no-report"]) == 1
        err = capsys.readouterr().err
        assert "holds a study with another spec" in err and '"sha256"' in err and "Traceback" not in err, err
        # ... `resume` goes on with the teacher the study imported, and says the file changed ...
        saved = StudyFolder(str(study)).saved_spec()
        assert preflight(saved, str(study)) == []
        assert any(w.startswith(f"teachers.weights.32: {weights} changed since this study imported it")
                   for w in preflight_warnings(saved)), preflight_warnings(saved)
        # ... and refuses the edited file where the import is not complete (its zoo entry gone)
        aside = tmp_path / "entry"
        shutil.move(imported, aside)
        try:
            assert main(["resume", str(study), "--no-report"]) == 2
        finally:
            shutil.move(aside, imported)
        err = capsys.readouterr().err
        assert "teachers.weights.32:" in err and "is not the file this study imported" in err, err
    finally:
        weights.write_bytes(data)


def test_reading_weights_files():
    """What a weights file may hold, without a study: nesting, prefixes, torchvision's files."""
    tv = pytest.importorskip("torchvision")
    sd = tv.models.resnet18(num_classes=10).state_dict()
    cfg = {"family": "torchvision", "size": "resnet18"}
    state, how = state_dict_of(sd, None, "torchvision", "torchvision")
    assert how == "at the top level"
    out = fit(state, cfg, (3, 32, 32), 10)
    assert list(out) == list(sd) and all(torch.equal(out[k], sd[k]) for k in sd)
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # a file older than PyTorch 0.4.1
    assert int(fit(old, cfg, (3, 32, 32), 10)["bn1.num_batches_tracked"]) == 0
    with pytest.raises(WeightsError, match=r"classify 1000 classes \(fc.weight: \[1000, 512\]\), the dataset has 10"):
        fit(tv.models.resnet18().state_dict(), cfg, (3, 32, 32), 10)
    with pytest.raises(WeightsError, match="1 names are not in the model"):
        fit({**sd, "extra.weight": torch.zeros(1)}, cfg, (3, 32, 32), 10)
    # DenseNet's published files name `norm1` as `norm.1`: renamed for the torchvision family only
    legacy = {"features.denseblock1.denselayer1.norm.1.weight": torch.ones(1),
              "features.denseblock1.denselayer1.conv.2.weight": torch.ones(1), "classifier.bias": torch.ones(1)}
    assert list(state_dict_of(legacy, None, "auto", "torchvision")[0]) == [
        "features.denseblock1.denselayer1.norm1.weight", "features.denseblock1.denselayer1.conv2.weight",
        "classifier.bias"]
    assert list(state_dict_of(legacy, None, "state_dict", "torchvision")[0]) == list(legacy)
    wrapped = {"ema": {"model": {f"module._orig_mod.{k}": v for k, v in legacy.items()}}, "step": 3}
    state, how = state_dict_of(wrapped, "ema.model", "state_dict", "mlp")
    assert list(state) == list(legacy) and how == "under 'ema.model', prefix 'module.' removed, prefix '_orig_mod.' removed"
    with pytest.raises(WeightsError, match=r"several state dicts \(state_dict, model\): name one with `key`"):
        state_dict_of({"state_dict": legacy, "model": legacy})
    with pytest.raises(WeightsError, match="format torchvision is for teachers of the torchvision family"):
        state_dict_of(legacy, None, "torchvision", "mlp")
    with pytest.raises(WeightsError, match="not a torchvision weights file"):
        state_dict_of({"model": legacy}, None, "torchvision", "torchvision")
