"""The speed benchmark runs on the CPU, counts FLOPs right, and CPU trials are reproducible.

No timing is asserted (this runs on shared 2-core CI machines): only that the
benchmark trains, reports positive throughput, sane FLOPs and a ratio to the
peer recipe. GPU figures are measured with the commands in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from trainables import bench
from trainables.loop import LocalHooks, run_trial

# CIFAR ResNet-20 (He et al. 2016; 3x3 convs, 1x1 projection shortcuts, 100-way head), counted by hand:
#   stem 3->16 @32x32: 16*3*9*1024 = 442,368 MACs
#   stage 1, 6 convs 16->16 @32x32: 6 * 2,359,296 = 14,155,776
#   stage 2, 16->32 s2 @16x16: 1,179,648; 5 convs 32->32: 11,796,480; shortcut 1x1: 131,072
#   stage 3, 32->64 s2 @8x8:   1,179,648; 5 convs 64->64: 11,796,480; shortcut 1x1: 131,072
#   fc 64->100: 6,400                              total 40,818,944 MACs ~ 40.8 M  (the "41 M" of papers)
RESNET20_FORWARD_FLOPS = 2 * 40.8e6  # FlopCounterMode counts a multiply-add as 2 FLOPs

SMALL = ["--teacher", "resnet8", "--student", "resnet8", "--batch", "32", "--seconds", "1", "--device", "cpu",
         "--warmup", "1", "--images", "256"]


def _run_json(capsys, argv) -> dict:
    assert bench.main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _close(actual, expected, rel=0.10) -> bool:
    return abs(actual - expected) <= rel * expected


FAKE_RECIPE = """
import torch
def make(name):
    return torch.nn.Linear(3, 100)
def flops_per_image(teacher, student, dev):
    return 2.0e8
def run_naive(args, teacher, student, dev):
    torch.cuda.synchronize()  # the real recipe does; on a CPU the bench's shim makes it a no-op
    return 10.0
"""


def test_bench_in_process_reports_throughput_kd_flops_and_peer_ratio(tmp_path, capsys):
    # a stand-in for naive_kd_recipe.py with its interface (make, flops_per_image, run_naive): the real
    # recipe is too slow for a unit test on a CPU (20 warm-up steps of ResNets at batch 64)
    fake = tmp_path / "fake_recipe.py"
    fake.write_text(FAKE_RECIPE)
    report = _run_json(capsys, SMALL + ["--method", "kd", "--peer", str(fake)])
    ours, peer = report["rows"]
    assert ours["recipe"] == "kdstudy" and ours["procs"] == 1 and ours["method"] == "kd"
    assert ours["img_s"] > 0 and ours["achieved_tflops"] > 0
    assert ours["mfu"] is None  # no measured peak on a CPU
    fwd = report["forward_flops_per_img"]
    # KD step = frozen teacher forward + student forward and backward (backward ~ 2x forward)
    assert _close(report["flops_per_img"], fwd["teacher"] + 3 * fwd["student"])
    assert math.isclose(ours["gflop_per_img"], report["flops_per_img"] / 1e9)
    assert report["runs"][0]["precision"] == "fp32" and report["runs"][0]["steps"] >= 1
    # the peer row: its own img/s and FLOPs; ours divided by its img/s
    assert peer["recipe"].startswith("peer-naive") and report["peer"]["cpu_shim"] is True
    assert peer["img_s"] == 10.0 and peer["gflop_per_img"] == pytest.approx(0.2)
    assert ours["ratio_vs_peer"] == pytest.approx(ours["img_s"] / 10.0)
    # the printed table has every column
    table = bench.format_table(report["rows"])
    header = table.splitlines()[0]
    for col in ("recipe", "pair", "method", "batch", "procs", "img/s", "GFLOP/img", "TFLOP/s", "MFU", "x peer"):
        assert col in header
    assert "resnet8->resnet8" in table and "n/a" in table  # MFU is n/a on a CPU


def test_resnet20_flops_match_the_hand_count():
    opts = bench.build_parser().parse_args(["--student", "resnet20", "--method", "scratch"])
    flops = bench.count_step_flops(opts)
    assert _close(flops["forward_flops_per_img"]["student"], RESNET20_FORWARD_FLOPS)
    # one training step of plain CE: forward + backward ~ 3x forward (the stem needs no input gradient)
    assert _close(flops["step_flops_per_img"], 3 * RESNET20_FORWARD_FLOPS)


def test_online_and_relational_methods_count_what_they_run():
    parse = bench.build_parser().parse_args
    trikd = bench.count_step_flops(parse(["--teacher", "resnet14", "--student", "resnet8", "--method", "trikd"]))
    fwd = trikd["forward_flops_per_img"]
    assert set(fwd) == {"teacher", "anchor", "student"}  # last generation: the anchor is there
    # online teacher and student both learn (forward + backward), the anchor only runs forward
    assert _close(trikd["step_flops_per_img"], 3 * fwd["teacher"] + 3 * fwd["student"] + fwd["anchor"])
    rkd = bench.count_step_flops(parse(["--teacher", "resnet14", "--student", "resnet8", "--method", "rkd"]))
    fwd = rkd["forward_flops_per_img"]
    assert _close(rkd["step_flops_per_img"], fwd["teacher"] + 3 * fwd["student"])


def test_bench_processes_share_the_device_and_sum(capsys):
    report = _run_json(capsys, SMALL + ["--method", "kd", "--procs", "2"])
    (row,) = report["rows"]
    run = report["runs"][0]
    assert row["procs"] == 2 and len(run["per_proc_img_s"]) == 2
    assert all(r > 0 for r in run["per_proc_img_s"])
    assert math.isclose(row["img_s"], sum(run["per_proc_img_s"]))
    assert run["threads"] == max(1, (os.cpu_count() or 1) // 2)  # the cores shared by the processes
    assert run["ray_imported"] is False  # the benchmark never imports Ray


def test_bench_rejects_unknown_names():
    with pytest.raises(SystemExit) as e:
        bench.main(["--student", "vgg13"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        bench.main(["--method", "no_such_method"])
    assert bench.parse_arch("resnet32x4") == {"family": "cifar_resnet", "size": 32, "width": 4}
    assert bench.parse_arch("wrn-40-2") == {"family": "wrn", "size": 40, "width": 2}
    # <family>:<size> types the size as the family takes it: an integer or a model name
    assert bench.parse_arch("plain_cnn:4") == {"family": "plain_cnn", "size": 4}
    assert bench.parse_arch("torchvision:resnet18") == {"family": "torchvision", "size": "resnet18"}
    for bad in ("torchvision:no_such_model", "plain_cnn:four"):
        with pytest.raises(ValueError, match=bad):
            bench.parse_arch(bad)
    with pytest.raises(SystemExit) as e:
        bench.main(["--student", "torchvision:no_such_model"])
    assert e.value.code == 2


def test_same_seed_cpu_trial_is_reproducible(data_root):
    def config():
        return {
            "study": "repro", "stage": "adhoc", "method": "scratch", "seed": 3,
            "dataset": {"name": "mnist1d", "num_samples": 1000, "root": data_root},
            "student": {"family": "mlp", "size": 16},
            "train": {"epochs": 2, "batch_size": 128, "lr": 0.01},
            "runtime": {"device": "cpu"}, "hp": {},
        }

    first, second = run_trial(config(), LocalHooks()), run_trial(config(), LocalHooks())
    assert len(first.metrics) == 2
    assert first.metrics == second.metrics  # exact equality, not approximate
    keys = ("val_loss", "val_acc", "test_loss", "test_acc", "train_loss", "train_acc", "loss_terms_json")
    assert [[r.get(k) for k in keys] for r in first.rows] == [[r.get(k) for k in keys] for r in second.rows]


def test_kdstudy_bench_passes_its_options_through(capsys):
    """`kdstudy bench --teacher ...` reaches the bench's own option parser."""
    from study.cli import main as cli_main

    assert cli_main(["bench", "--teacher", "resnet8", "--student", "resnet8", "--method", "kd", "--batch", "8",
                     "--seconds", "0.5", "--warmup", "1", "--json"]) == 0
    assert "img_s" in capsys.readouterr().out


def test_bench_measures_a_feature_method_through_the_loops_step(capsys, monkeypatch):
    """CRD in the bench: its sample indices reach the step, its heads are optimised and clipped with the
    student (the loop's `TrainStep`, `--grad-clip` as train.grad_clip), and its connectors' FLOPs are counted."""
    import torch

    from trainables import step as step_mod

    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm, *a, **k):
        params = list(params)
        clipped.append((len(params), max_norm))
        return real_clip(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    calls = []
    real_call = step_mod.TrainStep.__call__
    monkeypatch.setattr(step_mod.TrainStep, "__call__",
                        lambda self, x, y, index=None: calls.append(index is not None) or real_call(self, x, y, index))
    out = _run_json(capsys, SMALL + ["--method", "crd", "--hp", "crd_negatives=64", "--grad-clip", "1.0"])
    assert out["rows"][0]["img_s"] > 0 and calls and all(calls)  # every measured step got its indices
    assert out["forward_flops_per_img"]["connectors"] > 0  # the FLOP count sees the heads beside the models
    n_student = sum(1 for _ in bench.models_mod.build_model(bench.parse_arch("resnet8"), bench.IN_SHAPE,
                                                            bench.NUM_CLASSES).parameters())
    assert clipped and all(n > n_student and norm == 1.0 for n, norm in clipped)  # student + CRD heads
