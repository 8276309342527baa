"""Feature taps: named features from the forward pass that yields the logits, for every family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.losses import cross_entropy, rkd_angle, rkd_distance
from trainables.methods import Context, FrozenTeacherMethod, Step, Taps, get_method, tap_shapes
from trainables.models import TapError, build_meta, build_model, check_tap_names

IMG, SIG = (3, 16, 16), (1, 40)
BUILTIN = [
    ({"family": "mlp", "size": 16, "depth": 3}, SIG),
    ({"family": "cnn1d", "size": 8}, SIG),
    ({"family": "cnn1d", "size": 8, "multi_exit": True}, SIG),
    ({"family": "cifar_resnet", "size": 14}, IMG),
    ({"family": "cifar_resnet", "size": 8, "width": 2, "multi_exit": True}, IMG),
    ({"family": "wrn", "size": 10, "width": 1}, IMG),
    ({"family": "plain_cnn", "size": 6}, IMG),
]


def _model(cfg, shape, seed=0, nc=10):
    torch.manual_seed(seed)
    return build_model(cfg, shape, nc)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_tap_names_are_checked():
    check_tap_names(["logits", "penultimate", "stage:0", "stage:-1", "stages", "stage:2:preact", "stages:preact",
                     "module:layer1.0", "module:fc:input", "module:"])
    for bad in ["penultimat", "stage:x", "stage:", "module:a b", "stages:pre", 3]:
        with pytest.raises(TapError, match="unknown feature tap"):
            check_tap_names([bad])


@pytest.mark.parametrize("cfg,shape", BUILTIN, ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_penultimate_is_the_embedding_and_logits_are_unchanged(cfg, shape):
    m = _model(cfg, shape).eval()
    x = torch.randn(5, *shape)
    with torch.no_grad():
        ref_logits, ref_f = m(x), m.features(x)
        out, feats = Taps(m, ["penultimate", "logits", "stages"])(x)
    ref_last = ref_logits[-1] if isinstance(ref_logits, list) else ref_logits
    last = out[-1] if isinstance(out, list) else out
    assert torch.equal(feats["penultimate"], ref_f) and torch.equal(last, ref_last)
    assert feats["logits"] is out
    # the shapes probe agrees with the real forward and needs no arithmetic
    shapes = tap_shapes(m, ["penultimate", "stages", "logits"], shape)
    assert shapes["penultimate"] == (m.embedding_dim,)
    assert shapes["stages"] == [tuple(s.shape[1:]) for s in feats["stages"]]
    assert shapes["logits"] == ([(10,)] * m.num_exits if m.multi_exit else (10,))


def test_resnet_stages_and_preact_by_hand():
    m = _model({"family": "cifar_resnet", "size": 8, "width": 2}, IMG).eval()
    x = torch.randn(3, *IMG)
    taps = Taps(m, ["stages", "stages:preact", "stage:1", "stage:-1:preact"])
    with torch.no_grad():
        _, f = taps(x)
        h0 = m.stages[0](m.stem(x))
        blk = m.stages[1][0]  # stage 1 of resnet8 is one block: its sum before the ReLU, by hand
        pre1 = blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(h0))))) + blk.shortcut(h0)
    assert [tuple(s.shape[1:]) for s in f["stages"]] == [(32, 16, 16), (64, 8, 8), (128, 4, 4)]
    torch.testing.assert_close(f["stages"][0], h0)
    torch.testing.assert_close(f["stages:preact"][1], pre1)
    assert torch.equal(f["stage:1"], f["stages"][1]) and torch.equal(f["stage:-1:preact"], f["stages:preact"][2])
    for post, pre in zip(f["stages"], f["stages:preact"]):
        assert torch.equal(post, F.relu(pre)) and (pre < 0).any()


def test_wrn_stages_are_group_outputs_and_preact_the_next_bn():
    m = _model({"family": "wrn", "size": 16, "width": 1}, IMG).eval()  # two blocks per group
    x = torch.randn(2, *IMG)
    with torch.no_grad():
        _, f = Taps(m, ["stages", "stages:preact"])(x)
        h = m.stem(x)
        outs = []
        for b in m.blocks:
            h = b(h)
            outs.append(h)
    for got, want in zip(f["stages"], [outs[1], outs[3], outs[5]]):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(f["stages:preact"][0], m.blocks[2].bn1(outs[1]))
    torch.testing.assert_close(f["stages:preact"][2], m.bn(outs[5]))


def test_asking_for_nothing_installs_nothing_and_taps_come_off():
    m = _model({"family": "cifar_resnet", "size": 8}, IMG)
    taps = Taps(m, [])
    assert _hooks(m) == 0 and not taps
    x = torch.randn(2, *IMG)
    out, feats = taps(x)
    assert feats == {} and out.shape == (2, 10)
    taps = Taps(m, ["stages", "penultimate", "stage:0"])  # stage:0 shares the stages' hook
    assert _hooks(m) == 4
    taps.remove()
    assert _hooks(m) == 0


def test_probe_touches_no_state_and_works_on_meta():
    m = _model({"family": "cifar_resnet", "size": 8}, IMG).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    shapes = tap_shapes(m, ["stages", "penultimate"], IMG)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # BN statistics untouched
    assert m.training and all(mod.training for mod in m.modules())
    meta = build_meta({"family": "cifar_resnet", "size": 8}, IMG, 10)
    assert tap_shapes(meta, ["stages", "penultimate"], IMG) == shapes
    # the shapes follow the input size
    assert tap_shapes(meta, ["stage:0"], (3, 32, 32))["stage:0"] == (16, 32, 32)


def test_bad_taps_are_one_line_errors():
    m = _model({"family": "cifar_resnet", "size": 8}, IMG)
    with pytest.raises(TapError, match="has 3 stages"):
        Taps(m, ["stage:3"])
    with pytest.raises(TapError, match=r"no module 'stages.0.0.conv'.*did you mean .*stages.0.0.conv1"):
        Taps(m, ["module:stages.0.0.conv"])
    with pytest.raises(TapError, match="declares no pre-activation stages"):
        Taps(_model({"family": "mlp", "size": 8}, SIG), ["stages:preact"])
    # an output that a later in-place operation overwrites (BN followed by ReLU(inplace=True)), a module run twice
    with pytest.raises(TapError, match="changed in place"):
        tap_shapes(m, ["module:stem.1"], IMG)
    tv = build_meta({"family": "torchvision", "size": "resnet18"}, (3, 32, 32), 10)
    with pytest.raises(TapError, match="runs 2 times"):
        tap_shapes(tv, ["module:layer1.0.relu"], (3, 32, 32))
    assert tap_shapes(tv, ["module:layer1.0.conv1", "module:fc:input"], (3, 32, 32)) == {
        "module:layer1.0.conv1": (64, 8, 8), "module:fc:input": (512,)}


def test_torchvision_taps_resnet18_by_hand():
    m = _model({"family": "torchvision", "size": "resnet18"}, (3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, f = Taps(m, ["stages", "penultimate", "module:layer2.1.bn2"])(x)
        ref = m(x)
    assert [tuple(s.shape[1:]) for s in f["stages"]] == [(64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]
    torch.testing.assert_close(f["penultimate"], f["stages"][-1].mean(dim=(2, 3)))
    torch.testing.assert_close(m.fc(f["penultimate"]), out)
    torch.testing.assert_close(out, ref)


def test_torchvision_penultimate_skips_the_classifier_dropout_and_swin_is_channels_first():
    m = build_meta({"family": "torchvision", "size": "mobilenet_v3_small"}, (3, 32, 32), 10)
    taps = Taps(m, ["penultimate"])
    assert taps.plan["penultimate"].path == "classifier.2"  # the Dropout before the last Linear
    assert taps.shapes((3, 32, 32)) == {"penultimate": (1024,)}
    swin = build_meta({"family": "torchvision", "size": "swin_t"}, (3, 32, 32), 10)
    assert tap_shapes(swin, ["stages"], (3, 32, 32))["stages"] == [(96, 8, 8), (192, 4, 4), (384, 2, 2),
                                                                 (768, 1, 1)]


def test_channels_last_and_bf16_autocast_give_the_same_features():
    m = _model({"family": "cifar_resnet", "size": 8}, IMG).eval()
    x = torch.randn(2, *IMG)
    taps = Taps(m, ["stages", "penultimate"])
    with torch.no_grad():
        _, ref = taps(x)
        m.to(memory_format=torch.channels_last)
        _, cl = taps(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, low = taps(x.to(memory_format=torch.channels_last))
    for a, b, c in zip(ref["stages"] + [ref["penultimate"]], cl["stages"] + [cl["penultimate"]],
                       low["stages"] + [low["penultimate"]]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        assert c.dtype == torch.bfloat16 and c.shape == a.shape and torch.isfinite(c).all()
        torch.testing.assert_close(c.float(), a, rtol=0.1, atol=0.1)
    assert cl["stages"][0].is_contiguous(memory_format=torch.channels_last)


def test_taps_under_torch_compile_match_eager_and_carry_gradients():
    """Dynamo traces the hooks into the compiled forward (the eager backend: the hooks' capture is
    what is tested, not Inductor's code generation, which would cost a minute on a CPU)."""
    m = _model({"family": "cifar_resnet", "size": 8}, (3, 8, 8)).train()
    x = torch.randn(4, 3, 8, 8)
    taps = Taps(m, ["stages", "penultimate"])
    ref_out, ref = taps(x)
    torch._dynamo.reset()
    m.compile(backend="eager")
    out, f = taps(x)
    torch.testing.assert_close(out, ref_out)
    for a, b in zip(f["stages"] + [f["penultimate"]], ref["stages"] + [ref["penultimate"]]):
        torch.testing.assert_close(a, b)
    f["penultimate"].sum().backward()
    assert m.stem[0].weight.grad is not None and m.classifier.weight.grad is None
    # the shapes probe runs the compiled model eagerly, on meta
    assert taps.shapes((3, 8, 8))["stages"] == [(16, 8, 8), (32, 4, 4), (64, 2, 2)]


# ----- the method-facing API ------------------------------------------------------------------


def _ctx(student, teacher, shape, nc=10):
    def build(cfg):
        return build_model(cfg, shape, nc)

    def load(cfg):  # a "pretrained" stand-in: fixed weights, independent of the global RNG
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            return build_model(cfg, shape, nc)

    return Context(student=student, teacher=teacher, num_classes=nc, build_model=build, load_model=load,
                   extra={"in_shape": shape, "device": torch.device("cpu")})


class _Probe(FrozenTeacherMethod):
    """A method reading stages from both models (as AT or ReviewKD would)."""

    @classmethod
    def feature_taps(cls, hp=None):
        return {"student": ["stages", "penultimate"], "teacher": ["stages", "stage:1"]}

    def training_step(self, x, y):
        f = self.forward_both(x)
        return Step({"ce": cross_entropy(f.student_logits, y)}, f.student_logits)


def test_frozen_teacher_method_serves_taps_without_teacher_gradients():
    ctx = _ctx({"family": "cifar_resnet", "size": 8}, {"family": "torchvision", "size": "resnet18"}, (3, 32, 32))
    m = _Probe(ctx, {}).train()
    assert m.tap_shapes("student") == {"stages": [(16, 32, 32), (32, 16, 16), (64, 8, 8)], "penultimate": (64,)}
    assert m.tap_shapes("teacher")["stage:1"] == (128, 4, 4)
    f = m.forward_both(torch.randn(4, 3, 32, 32))
    assert not m.teacher.training and m.student.training
    assert all(t.requires_grad for t in f.student["stages"]) and f.student_logits.requires_grad
    assert not any(t.requires_grad for t in f.teacher["stages"]) and not f.teacher_logits.requires_grad
    assert torch.equal(f.teacher["stage:1"], f.teacher["stages"][1])
    # a method that asks for nothing gets plain forwards: no hook on either model
    kd = get_method("kd")(ctx, {})
    assert _hooks(kd.student) == 0 and _hooks(kd.teacher) == 0


#: RKD's terms on main before the taps (the embeddings came from `features`, the logits from `head`)
RKD_MAIN = [
    ({"family": "cifar_resnet", "size": 8}, {"family": "cifar_resnet", "size": 14}, (3, 16, 16), 0.0,
     {"ce": 2.3679141998291016, "rkd_distance": 0.7954685091972351, "rkd_angle": 1.4836820363998413}),
    ({"family": "mlp", "size": 16}, {"family": "cnn1d", "size": 8}, (1, 40), 0.5,
     {"ce": 1.1385172605514526, "rkd_distance": 1.5672234296798706, "rkd_angle": 2.6070377826690674,
      "kd": 0.011116402223706245}),
]


@pytest.mark.parametrize("student,teacher,shape,alpha,expected", RKD_MAIN)
def test_rkd_on_the_penultimate_tap_keeps_its_loss_values(student, teacher, shape, alpha, expected):
    torch.manual_seed(0)
    m = get_method("rkd")(_ctx(student, teacher, shape), {"alpha": alpha}).train()
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g)
    step = m.training_step(x, y)
    assert {k: float(v.detach()) for k, v in step.terms.items()} == pytest.approx(expected, rel=1e-5)
    # and exactly what the embeddings of `features` give
    with torch.no_grad():
        ft = m.teacher.features(x)
    fs = m.student.features(x)
    assert step.terms["rkd_distance"].item() == (25.0 * rkd_distance(fs, ft)).item()
    assert step.terms["rkd_angle"].item() == (50.0 * rkd_angle(fs, ft)).item()


def test_rkd_works_across_families_with_a_torchvision_student():
    ctx = _ctx({"family": "torchvision", "size": "mobilenet_v3_small"}, {"family": "cifar_resnet", "size": 8},
               (3, 32, 32))
    torch.manual_seed(0)
    m = get_method("rkd")(ctx, {}).train()
    assert m.tap_shapes("student")["penultimate"] == (1024,) and m.tap_shapes("teacher")["penultimate"] == (64,)
    g = torch.Generator().manual_seed(0)
    step = m.training_step(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
    assert set(step.terms) == {"ce", "rkd_distance", "rkd_angle"}
    sum(step.terms.values()).backward()
    assert all(torch.isfinite(v) for v in step.terms.values())
    assert m.student.classifier[0].weight.grad is not None


# ----- a plug-in family: the same register_family, the same taps -------------------------------


@pytest.fixture()
def plugin_family():
    from trainables.models import register_family
    from trainables.models.registry import _FAMILIES

    class Toy(nn.Module):  # a model that is not a kdstudy SingleExit: no `features`, no `classifier`
        def __init__(self, width, num_classes):
            super().__init__()
            self.blocks = nn.Sequential(nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU()),
                                        nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU()))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5),
                                      nn.Linear(2 * width, num_classes))

        def forward(self, x):
            return self.head(self.blocks(x))

    register_family("toy_plugin", options={}, sizes_hint="width",
                    arch_name=lambda c: f"toy-{c['size']}",
                    stages=lambda m: ["blocks.0", "blocks.1"])(lambda cfg, shape, nc, me: Toy(cfg["size"], nc))
    register_family("toy_plugin_bare", options={}, sizes_hint="width",
                    arch_name=lambda c: f"bare-{c['size']}")(lambda cfg, shape, nc, me: Toy(cfg["size"], nc))
    yield
    _FAMILIES.pop("toy_plugin")
    _FAMILIES.pop("toy_plugin_bare")


def test_a_plugin_family_gets_taps_from_its_declared_stages(plugin_family):
    m = _model({"family": "toy_plugin", "size": 4}, IMG).train()
    x = torch.randn(3, *IMG)
    out, f = Taps(m, ["stages", "stage:-1", "penultimate"])(x)
    assert [tuple(s.shape[1:]) for s in f["stages"]] == [(4, 16, 16), (8, 8, 8)]
    # penultimate found generically: the last Linear's input, before the dropout that precedes it
    torch.testing.assert_close(f["penultimate"], f["stage:-1"].mean(dim=(2, 3)))
    assert tap_shapes(m, ["penultimate"], IMG) == {"penultimate": (8,)}
    bare = _model({"family": "toy_plugin_bare", "size": 4}, IMG)
    with pytest.raises(TapError, match=r"declares no stages.*'module:<path>'"):
        Taps(bare, ["stages"])
    assert tap_shapes(bare, ["module:blocks.1", "penultimate"], IMG) == {"module:blocks.1": (8, 8, 8),
                                                                        "penultimate": (8,)}
