"""How trials pack on GPU nodes: the shipped cluster and specs agree, and plan/preflight say when GPUs idle."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study import plan as plan_mod
from study.plan import NodeShape, idle_gpu_warning, packing, parse_node
from study.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
GPU_SPECS = [p for p in sorted((ROOT / "studies").glob("*.yaml"))
             if (yaml.safe_load(p.read_text()).get("resources") or {}).get("gpu")]


def test_packing_is_min_of_cpus_and_gpu_slices():
    assert packing({"cpu": 2, "gpu": 0.25}, NodeShape(4, 1)) == plan_mod.Packing(2, 2, 4)  # the old g5.xlarge
    assert packing({"cpu": 2, "gpu": 0.25}, NodeShape(8, 1)).trials == 4
    assert packing({"cpu": 1, "gpu": 0.3}, NodeShape(16, 2)).trials == 6  # 3 per GPU: a share stays on one GPU
    assert packing({"cpu": 1, "gpu": 0}, NodeShape(16, 2)) == plan_mod.Packing(16, 16, None)
    assert packing({"cpu": 2, "gpu": 1}, NodeShape(48, 4)).trials == 4


def test_idle_gpu_warning_names_the_numbers_and_the_fix():
    w = idle_gpu_warning({"cpu": 2, "gpu": 0.25}, NodeShape(4, 1))
    assert "runs 2 trials at once, not the 4" in w and "50%" in w and "cpu: 1" in w and "8 CPUs per GPU" in w
    assert idle_gpu_warning({"cpu": 2, "gpu": 0.25}, NodeShape(8, 1)) is None
    assert idle_gpu_warning({"cpu": 2, "gpu": 0.25}, NodeShape(8, 0)) is None  # no GPU: nothing idles
    w = idle_gpu_warning({"cpu": 1, "gpu": 0}, NodeShape(16, 1, "this machine"))
    assert w.startswith("this machine with 16 CPUs and 1 GPU") and "resources.gpu is 0" in w
    assert parse_node("8:1") == NodeShape(8.0, 1) and parse_node("12") == NodeShape(12.0, 0)
    for bad in ("x", "8:one", "0:1", "-2:1"):
        with pytest.raises(ValueError, match="--node"):
            parse_node(bad)


@pytest.mark.parametrize("path", GPU_SPECS, ids=[p.stem for p in GPU_SPECS])
def test_shipped_gpu_nodes_pack_what_the_shipped_specs_ask(path):
    """Every GPU node type of cluster.yaml runs as many trials of every ready GPU spec as its GPUs hold."""
    resources = yaml.safe_load(path.read_text())["resources"]
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for name, node in config["available_node_types"].items():
        shape = NodeShape(node["resources"].get("CPU", 0), node["resources"].get("GPU", 0), name)
        if shape.gpus:
            assert idle_gpu_warning(resources, shape) is None, (name, idle_gpu_warning(resources, shape))


def test_kdstudy_plan_with_a_node_shape_warns_and_sizes_its_slots(tmp_path, capsys):
    from study.cli import main

    spec = ROOT / "studies" / "cifar100_resnet32x4_resnet8x4.yaml"
    assert main(["plan", str(spec), "--node", "4:1"]) == 0
    out = capsys.readouterr().out
    assert "a node with 4 CPUs and 1 GPU: 2 trials at once (its CPUs allow 2, its GPUs 4)" in out
    assert "warning: a node with 4 CPUs and 1 GPU runs 2 trials at once" in out
    assert "\n     2 " in out  # the slots row predicted for that node
    assert main(["plan", str(spec), "--node", "eight"]) == 2
    assert "--node wants CPUS[:GPUS]" in capsys.readouterr().err


def test_preflight_refuses_cuda_without_a_gpu_request_and_warns_of_idle_gpus(tmp_path, monkeypatch, data_root):
    from study.preflight import preflight, preflight_warnings
    from tests.conftest import micro_spec

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(micro_spec(tmp_path, data_root, runtime={"device": "cuda"},
                                              resources={"cpu": 1, "gpu": 0})))
    spec = load_spec(path)
    problems = preflight(spec, str(tmp_path / "results"), local=False)
    assert any("resources.gpu is 0" in p for p in problems)
    monkeypatch.setattr(plan_mod, "this_machine", lambda: NodeShape(16, 2, "this machine"))
    (w,) = preflight_warnings(spec, local=True)
    assert "this machine with 16 CPUs and 2 GPUs" in w and "runs on the CPU" in w
    assert preflight_warnings(spec, local=False) == []  # a cluster's nodes are not this machine
