"""The CUDA path, exercised on a CPU: CUDA faked, the loop's real code run with a CUDA device plan.

`fake_cuda` makes the device choice see a CUDA device
(`trainables.device.cuda_available`), records `set_per_process_memory_fraction` after torch's own
argument check (`_get_device_index`, which raises for an unindexed "cuda"
exactly as the real call does), and lets the loop and the benchmark compute
the *real* plan of the CUDA device they chose (`trainables.device.plan_device`)
while placing tensors on the CPU. Every CUDA-only choice -- memory cap, TF32
switches, cuDNN benchmark, bf16 autocast, channels_last, compile, fused
optimiser -- is then taken by the same lines a GPU run takes; only the
tensors' device differs. What cannot run without a GPU (kernels, cuDNN) is
checked by `kdstudy bench --first-run` on a real one (bench/RESULTS.md).
"""

from __future__ import annotations

import dataclasses
import io
import os

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from trainables import bench, device as device_mod, loop, storage
from trainables.device import DeviceError, choose_device, plan_device, tf32_state
from trainables.loop import LocalHooks, run_trial

CPU = torch.device("cpu")


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch says it has one CUDA device; plans are the CUDA ones, tensors stay on the CPU."""
    calls = {"memory_fraction": [], "plans": []}
    monkeypatch.setattr(device_mod, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "fake GPU")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda *a, **k: None)

    def set_fraction(fraction, device=None):
        index = torch.cuda._utils._get_device_index(device)  # torch's own check (ValueError for "cuda")
        calls["memory_fraction"].append((fraction, index))

    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
    real_plan = device_mod.plan_device

    def cuda_plan_on_cpu(device, runtime, data_kind="image"):
        plan = real_plan(device, runtime, data_kind)
        calls["plans"].append(plan)
        return dataclasses.replace(plan, device=CPU)

    for module in (loop, bench):
        monkeypatch.setattr(module, "plan_device", cuda_plan_on_cpu)
    saved = (tf32_state(), torch.backends.cudnn.benchmark)
    yield calls
    device_mod.set_tf32(saved[0]["matmul"] == "tf32")
    torch.backends.cudnn.conv.fp32_precision = saved[0]["conv"]
    torch.backends.cudnn.benchmark = saved[1]


@pytest.fixture
def clean_dynamo():
    import torch._dynamo

    cfg = torch._dynamo.config
    saved = (cfg.recompile_limit, cfg.accumulated_recompile_limit, cfg.fail_on_recompile_limit_hit)
    yield
    torch._dynamo.reset()
    cfg.recompile_limit, cfg.accumulated_recompile_limit, cfg.fail_on_recompile_limit_hit = saved


def image_config(data_root, **runtime):
    return {
        "study": "fakecuda", "stage": "adhoc", "method": "scratch", "seed": 0,
        "dataset": {"name": "synthetic_image", "synthetic_size": 64, "train_subset": 10},
        "student": {"family": "cifar_resnet", "size": 8},
        "train": {"epochs": 1, "batch_size": 5, "lr": 0.05, "optimizer": "adamw", "grad_clip": 5.0},
        "runtime": {"device": "auto", **runtime}, "hp": {},
    }


# --------------------------------------------------------------------------- 1. device selection


def test_device_choice_follows_what_ray_gave(fake_cuda, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    # inside Ray: a trial given no GPU stays on the CPU although CUDA is visible to its process
    assert choose_device({"device": "auto"}, gpu_ids=[]) == CPU
    assert choose_device({"device": "cpu"}, gpu_ids=["0"]) == CPU
    assert choose_device({"device": "auto"}, gpu_ids=["0"]) == torch.device("cuda", 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # Ray's list for this worker: torch's 0 and 1
    assert choose_device({"device": "cuda"}, gpu_ids=["3"]) == torch.device("cuda", 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: a physical id
    assert choose_device({"device": "auto"}, gpu_ids=["2"]) == torch.device("cuda", 2)
    with pytest.raises(DeviceError, match="Ray gave this trial no GPU"):
        choose_device({"device": "cuda"}, gpu_ids=[])
    with pytest.raises(DeviceError, match="a trial trains on one GPU"):
        choose_device({"device": "auto"}, gpu_ids=["0", "1"])
    # outside Ray (no gpu_ids): what is there; always an indexed device
    assert choose_device({"device": "auto"}) == torch.device("cuda", 0)
    assert choose_device({"device": "cuda"}) == torch.device("cuda", 0)
    assert choose_device({"device": "cuda:1"}) == torch.device("cuda", 1)


def test_device_choice_without_cuda():
    assert not torch.cuda.is_available()  # this test describes a CPU machine
    assert choose_device({"device": "auto"}) == CPU
    assert choose_device({"device": "auto"}, gpu_ids=["0"]) == CPU  # a declared GPU torch cannot use
    with pytest.raises(DeviceError, match="CUDA is not available"):
        choose_device({"device": "cuda"})
    with pytest.raises(DeviceError, match="cannot use CUDA"):
        choose_device({"device": "cuda"}, gpu_ids=["0"])


# --------------------------------------------------------------------------- 2. the plan of a CUDA device


def test_cuda_plan_precision_layout_and_memory_cap():
    cuda = torch.device("cuda", 0)
    auto = plan_device(cuda, {"gpu_fraction": 0.25}, "image")
    assert auto.memory_fraction == (0.25, cuda)
    assert auto.autocast_dtype is torch.bfloat16 and auto.tf32 is False  # bf16 models, IEEE fp32 elsewhere
    assert auto.channels_last and auto.fused_optimizer and auto.cudnn_benchmark
    assert plan_device(torch.device("cuda"), {"gpu_fraction": 0.5}).memory_fraction[1].index == 0  # indexed
    assert plan_device(cuda, {"gpu_fraction": 1.0}).memory_fraction is None  # a whole GPU: no cap
    fp32 = plan_device(cuda, {"precision": "fp32"}, "signal")
    assert fp32.autocast_dtype is None and fp32.tf32 is False and not fp32.channels_last
    tf32 = plan_device(cuda, {"precision": "tf32"})
    assert tf32.autocast_dtype is None and tf32.tf32 is True and tf32.precision == "tf32"
    cpu = plan_device(CPU, {"gpu_fraction": 0.25}, "image")
    assert cpu.memory_fraction is None and cpu.tf32 is None and not cpu.channels_last and not cpu.fused_optimizer
    assert plan_device(CPU, {"precision": "bf16"}).autocast_dtype is torch.bfloat16
    with pytest.raises(DeviceError, match="precision"):
        plan_device(cuda, {"precision": "fp16"})


def test_applying_a_cuda_plan_sets_the_memory_cap_and_tf32_switches(fake_cuda):
    cuda = torch.device("cuda", 0)
    plan_device(cuda, {"gpu_fraction": 0.25, "precision": "tf32"}).apply()
    assert fake_cuda["memory_fraction"] == [(0.25, 0)]
    assert tf32_state() == {"matmul": "tf32", "conv": "tf32"}
    plan_device(cuda, {"precision": "fp32"}).apply()  # a reused actor's next trial: TF32 off again
    assert tf32_state() == {"matmul": "ieee", "conv": "ieee"}
    assert torch.backends.cudnn.benchmark is True
    plan_device(cuda, {}).apply()  # auto: bf16 autocast, and float32 outside it is IEEE (the losses)
    assert tf32_state() == {"matmul": "ieee", "conv": "ieee"}
    # the call the loop used to make, as torch answers it
    with pytest.raises(ValueError, match="specified index"):
        torch.cuda.set_per_process_memory_fraction(0.25, torch.device("cuda"))


# --------------------------------------------------------------------------- 3. a whole trial on the CUDA path


def test_fractional_gpu_trial_runs_the_cuda_path(fake_cuda, data_root, clean_dynamo):
    """A `gpu: 0.25` trial as a study configures it: memory cap on an indexed device, bf16
    autocast around the models, channels_last batches and models, fused AdamW, clipping."""
    seen = {"conv": set(), "fused": set()}

    def conv_hook(module, args, out):  # every conv the trial runs
        if isinstance(module, torch.nn.Conv2d):
            seen["conv"].add((args[0].is_contiguous(memory_format=torch.channels_last), out.dtype))

    def opt_hook(opt, args, kwargs):
        seen["fused"].add(opt.defaults.get("fused"))

    cfg = image_config(data_root, gpu_fraction=0.25, gpu_ids=["0"])
    loop.model_facts(cfg["student"], (3, 32, 32), 10)  # FLOPs counted now (on a CPU copy), not under the hook
    h1 = torch.nn.modules.module.register_module_forward_hook(conv_hook)
    h2 = register_optimizer_step_pre_hook(opt_hook)
    try:
        hooks = run_trial(cfg, LocalHooks())
    finally:
        h1.remove()
        h2.remove()
    (plan,) = fake_cuda["plans"]
    assert plan.device == torch.device("cuda", 0)
    assert fake_cuda["memory_fraction"] == [(0.25, 0)]
    assert seen["conv"] == {(True, torch.bfloat16)}  # channels_last in, bf16 out: autocast and layout
    assert seen["fused"] == {True}
    assert [m["epoch"] for m in hooks.metrics] == [1]
    assert all(m["train_loss"] == m["train_loss"] for m in hooks.metrics)  # finite


def test_benchmark_procs_worker_caps_memory_on_an_indexed_device(fake_cuda, clean_dynamo):
    """`--procs 4` workers each hold a quarter of the GPU (the call crashed before)."""
    opts = bench.build_parser().parse_args(["--student", "resnet8", "--method", "scratch",
                                            "--batch", "4", "--seconds", "0.1", "--warmup", "1",
                                            "--images", "16", "--grad-clip", "1.0"])
    result = bench.measure(opts, gpu_fraction=0.25)
    assert fake_cuda["memory_fraction"] == [(0.25, 0)]
    assert result["precision"] == "bf16" and result["plan"]["fused_optimizer"] and result["channels_last"]
    assert result["steps"] >= 1


def test_checkpoint_written_as_cuda_tensors_resumes_on_a_cpu_machine(data_root, tmp_path, monkeypatch):
    """A GPU trial's checkpoint (CUDA storages, a CUDA generator's state) read where there is no GPU."""
    cfg = {"study": "fakecuda", "stage": "adhoc", "method": "scratch", "seed": 0,
           "dataset": {"name": "mnist1d", "num_samples": 400, "root": data_root},
           "student": {"family": "cnn1d", "size": 8}, "train": {"epochs": 2, "batch_size": 64, "lr": 0.01},
           "runtime": {"device": "auto", "gpu_fraction": 0.25, "gpu_ids": ["0"]}, "hp": {}}
    uri = str(tmp_path / "ckpt.pt")

    class StopAfterFirst(LocalHooks):
        def report(self, metrics, rows, state, final=False):
            super().report(metrics, rows, state, final)
            raise KeyboardInterrupt  # the node is lost after epoch 1's checkpoint

    with monkeypatch.context() as m:  # the GPU machine
        m.setattr(device_mod, "cuda_available", lambda: True)
        m.setattr(torch.cuda, "set_per_process_memory_fraction", lambda *a, **k: None)
        m.setattr(loop, "plan_device", lambda d, r, k="image": dataclasses.replace(plan_device(d, r, k), device=CPU))
        first = StopAfterFirst()
        with pytest.raises(KeyboardInterrupt):
            run_trial(cfg, first)
        state = dict(first.state)
        state["rng"] = torch.tensor([0] * 8 + [0] * 8, dtype=torch.uint8)  # a CUDA generator: seed + offset
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")  # every storage on cuda:0
        storage.save_state(state, uri)
    raw = open(uri, "rb").read()
    with pytest.raises(RuntimeError, match="CUDA"):  # it really is a CUDA checkpoint
        torch.load(io.BytesIO(raw), weights_only=True)
    restored = storage.load_state(uri)
    assert restored["method"]["student.classifier.weight"].device == CPU
    cfg["runtime"] = {"device": "auto", "gpu_fraction": 0.25, "gpu_ids": []}  # now a CPU node
    resumed = run_trial(cfg, LocalHooks(state=restored))
    assert [r["epoch"] for r in resumed.rows] == [1, 2] and resumed.rows[-1]["device"] == "cpu"


# --------------------------------------------------------------------------- 4. compile in a reused process


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _compiled_trial(data_root, size: int) -> dict:
    """A small compiled trial; the eager backend keeps the cost to tracing (the limit is dynamo's)."""
    return {"method": "scratch", "seed": 0, "dataset": {"name": "mnist1d", "num_samples": 200, "root": data_root},
            "student": {"family": "mlp", "size": size}, "train": {"epochs": 1, "batch_size": 128, "lr": 0.01},
            "runtime": {"device": "cpu", "compile": True, "compile_backend": "eager"}, "hp": {}}


def test_compile_keeps_compiling_architecture_after_architecture(data_root, clean_dynamo):
    """Five architectures back to back in one process (a reused Tune actor) all run compiled.

    They share one forward function; torch keeps 8 compiled versions of it and then
    silently runs it uncompiled: before the fix these five compiled 3, 2, 2, 1 and 0 graphs."""
    new_graphs = []
    for size in (4, 6, 8, 10, 12):
        before = _compiled_graphs()
        run_trial(_compiled_trial(data_root, size), LocalHooks())
        new_graphs.append(_compiled_graphs() - before)
    assert new_graphs == [3] * 5, new_graphs  # training (full and last batch) and evaluation, every time


def test_compile_limit_is_an_error_not_a_silent_slowdown(data_root, clean_dynamo, monkeypatch):
    monkeypatch.setattr(device_mod, "RECOMPILES_PER_MODEL", 1)  # a budget the trial must exceed
    with pytest.raises(device_mod.CompileLimitHit, match="runtime.compile"):
        run_trial(_compiled_trial(data_root, 4), LocalHooks())


# --------------------------------------------------------------------------- 5. a gpu: 0 trial under Ray


def test_gpu0_trial_in_a_ray_worker_with_visible_cuda_trains_on_the_cpu(ray_local, data_root, tmp_path):
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES set in a `num_gpus=0` worker: the trial must not
    take the GPU it sees. The worker's torch is told it has CUDA; choosing it would fail here."""
    from ray import tune

    from trainables.trainable import tune_trainable

    def trainable_on_a_gpu_machine(config, base):
        import trainables.device

        os.environ["CUDA_VISIBLE_DEVICES"] = "0"  # inherited from the node
        trainables.device.cuda_available = lambda: True  # this process can use a GPU
        tune_trainable(config, base)

    base = {"study": "gpu0", "stage": "adhoc", "method": "scratch", "seed": 0,
            "dataset": {"name": "mnist1d", "num_samples": 400, "root": data_root},
            "student": {"family": "mlp", "size": 8}, "train": {"epochs": 1, "batch_size": 128, "lr": 0.01},
            "runtime": {"device": "auto", "gpu_fraction": 0.0}, "hp": {}, "paths": {}}
    fn = tune.with_resources(tune.with_parameters(trainable_on_a_gpu_machine, base=base), {"cpu": 1, "gpu": 0})
    grid = tune.Tuner(fn, param_space={"_trial_key": "gpu0-trial"},
                      run_config=tune.RunConfig(storage_path=str(tmp_path), name="gpu0", verbose=0)).fit()
    assert not grid.errors, grid.errors
    rows = grid[0].metrics["rows"]
    assert rows and {r["device"] for r in rows} == {"cpu"}


def test_first_run_on_a_cpu_machine_says_it_needs_a_gpu(capsys):
    from study.cli import main
    from study.firstrun import EXIT_NO_GPU

    assert main(["bench", "--first-run", "--quick"]) == EXIT_NO_GPU == 3
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "nothing was checked" in err
    with pytest.raises(SystemExit) as e:  # the bench module itself never starts Ray: it points to the command
        bench.main(["--first-run"])
    assert e.value.code == 2
