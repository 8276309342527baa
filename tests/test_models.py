"""Model families: shapes, features/head contract, sizes, FLOPs, multi-exit, names."""

from __future__ import annotations

import pytest
import torch

from trainables.models import (
    arch_name,
    available_families,
    build_model,
    count_flops,
    count_params,
    exit_flops,
    family_options,
    family_sizes_hint,
    supports_multi_exit,
)

IMG = (3, 32, 32)
SIG = (1, 40)

# (cfg, in_shape) for every family at a couple of sizes
CASES = [
    ({"family": "mlp", "size": 32}, SIG),
    ({"family": "mlp", "size": 64, "depth": 3}, IMG),
    ({"family": "cnn1d", "size": 4}, SIG),
    ({"family": "cnn1d", "size": 16, "depth": 4}, SIG),
    ({"family": "cifar_resnet", "size": 8}, IMG),
    ({"family": "cifar_resnet", "size": 14, "width": 2}, IMG),
    ({"family": "wrn", "size": 10, "width": 1}, IMG),
    ({"family": "wrn", "size": 16, "width": 2}, IMG),
    ({"family": "plain_cnn", "size": 2}, IMG),
    ({"family": "plain_cnn", "size": 10}, IMG),
]


def _seeded(cfg, in_shape, num_classes=10):
    torch.manual_seed(0)
    return build_model(cfg, in_shape, num_classes)


def test_all_families_registered():
    assert available_families() == sorted(["mlp", "cnn1d", "cifar_resnet", "wrn", "plain_cnn", "torchvision"])
    for fam in available_families():
        assert isinstance(family_sizes_hint(fam), str) and family_sizes_hint(fam)
    assert supports_multi_exit("cnn1d") and supports_multi_exit("cifar_resnet")
    assert not supports_multi_exit("wrn")
    assert family_options("wrn") == {"width": 2, "dropout": 0.0}


@pytest.mark.parametrize("cfg,in_shape", CASES, ids=lambda v: arch_name(v) if isinstance(v, dict) else None)
def test_shapes_and_features_head(cfg, in_shape):
    m = _seeded(cfg, in_shape, num_classes=7).eval()
    x = torch.randn(3, *in_shape)
    with torch.no_grad():
        logits = m(x)
        f = m.features(x)
        assert logits.shape == (3, 7)
        assert f.shape == (3, m.embedding_dim)
        torch.testing.assert_close(m.head(f), logits)
    assert m.multi_exit is False


def test_features_head_in_train_mode_gives_same_logits_and_gradients():
    m = _seeded({"family": "cifar_resnet", "size": 8}, IMG).train()
    x = torch.randn(4, *IMG)
    torch.manual_seed(1)
    f = m.features(x)
    logits = m.head(f)
    logits.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    # BN in train mode uses batch statistics: forward on the same batch gives the same logits
    torch.testing.assert_close(m(x), logits)


def test_channels_last_and_bf16_autocast():
    m = _seeded({"family": "cifar_resnet", "size": 8}, IMG).eval()
    x = torch.randn(2, *IMG)
    with torch.no_grad():
        ref = m(x)
        m_cl = m.to(memory_format=torch.channels_last)
        out = m_cl(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m_cl(x.to(memory_format=torch.channels_last))
        assert low.shape == ref.shape and torch.isfinite(low).all()


def test_cnn1d_accepts_flat_signals():
    m = _seeded({"family": "cnn1d", "size": 4}, (40,)).eval()
    assert m(torch.randn(5, 40)).shape == (5, 10)


# ----- parameter counts -------------------------------------------------------------------


def test_mlp_param_count_by_formula():
    d_in, h, c, depth = 40, 32, 10, 3
    m = build_model({"family": "mlp", "size": h, "depth": depth}, (1, d_in), c)
    expected = (d_in * h + h) + (depth - 1) * (h * h + h) + (h * c + c)
    assert count_params(m) == expected


def test_cnn1d_param_count_by_formula():
    w, length, c = 16, 40, 10
    m = build_model({"family": "cnn1d", "size": w}, (1, length), c)
    expected = (1 * w * 5 + w) + 2 * (w * w * 5 + w) + (w * length * c + c)
    assert count_params(m) == expected
    assert m.embedding_dim == w * length


def _resnet_params_by_hand(depth, width, num_classes, in_ch=3):
    """Stem conv+BN, basic blocks (two 3x3 conv+BN, 1x1 conv+BN projection on shape change), fc."""
    n = (depth - 2) // 6
    widths = [16 * width, 32 * width, 64 * width]
    total = in_ch * widths[0] * 9 + 2 * widths[0]
    cin = widths[0]
    for w in widths:
        for _ in range(n):
            total += 9 * cin * w + 9 * w * w + 4 * w
            if cin != w:
                total += cin * w + 2 * w
            cin = w
    return total + cin * num_classes + num_classes


@pytest.mark.parametrize(
    "cfg,approx",
    [
        ({"family": "cifar_resnet", "size": 20}, 0.27e6),
        ({"family": "cifar_resnet", "size": 56}, 0.86e6),
        ({"family": "wrn", "size": 40, "width": 2}, 2.25e6),
        ({"family": "cifar_resnet", "size": 32, "width": 4}, 7.43e6),
    ],
)
def test_known_param_counts_cifar100(cfg, approx):
    m = build_model(cfg, IMG, 100)
    assert abs(count_params(m) - approx) / approx < 0.04, count_params(m)


def _plain_params_by_hand(convs, pools, fcs, num_classes, hw=32):
    """conv 3x3 with bias + BN (2 per channel), then flatten into the FC layers (with bias)."""
    total, cin = 0, 3
    for c in convs:
        total += 9 * cin * c + c + 2 * c
        cin = c
    d = cin * (hw // 2 ** pools) ** 2
    for f in fcs + [num_classes]:
        total += d * f + f
        d = f
    return total


@pytest.mark.parametrize("size,convs,pools,fcs,authors", [
    # the TAKD authors' plane2..plane10 for CIFAR-100 (imirzadeh/Teacher-Assistant-Knowledge-Distillation,
    # plain_cnn_cifar.py `plane_cifar100_book`): about 215k / 476k / 1.11M / 1.25M / 2.93M parameters
    (2, [32, 32], 2, [], 215_172),
    (4, [32, 32, 64, 64], 2, [], 475_652),
    (6, [32, 32, 64, 64, 128, 128], 2, [], 1_107_204),
    (8, [32, 32, 64, 64, 128, 128, 256, 256], 4, [64], 1_246_276),
    (10, [32, 32, 64, 64, 128, 128, 256, 256, 256, 256], 4, [512], 2_931_460),
])
def test_plain_cnn_is_the_takd_authors_network_cifar100(size, convs, pools, fcs, authors):
    m = build_model({"family": "plain_cnn", "size": size}, IMG, 100)
    assert count_params(m) == _plain_params_by_hand(convs, pools, fcs, 100) == authors
    assert m(torch.randn(2, *IMG)).shape == (2, 100)
    assert m.embedding_dim == (fcs[-1] if fcs else convs[-1] * (32 // 2 ** pools) ** 2)


def test_plain_cnn_cifar10_uses_the_authors_cifar10_book():
    # plane2 for CIFAR-10: Conv16, MaxPool, Conv16, MaxPool, FC10; plane10: ..., FC128, FC10
    assert count_params(build_model({"family": "plain_cnn", "size": 2}, IMG, 10)) == \
        _plain_params_by_hand([16, 16], 2, [], 10)
    assert count_params(build_model({"family": "plain_cnn", "size": 10}, IMG, 10)) == \
        _plain_params_by_hand([32, 32, 64, 64, 128, 128, 256, 256, 256, 256], 4, [128], 10)


def test_cnn1d_published_mnist1d_network():
    """greydanus/mnist1d ConvBase: 25 channels, kernels 5/3/3, stride 2, padding 1, 40 -> 19 -> 10 -> 5."""
    cfg = {"family": "cnn1d", "size": 25, "kernel": [5, 3, 3], "stride": 2, "padding": 1}
    m = build_model(cfg, SIG, 10)
    assert m.embedding_dim == 125
    assert count_params(m) == (1 * 25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10) == 5210
    assert m(torch.randn(3, *SIG)).shape == (3, 10)
    assert arch_name(cfg) == "cnn1d-w25-k5.3.3-s2-p1"
    me = build_model({**cfg, "multi_exit": True}, SIG, 10)
    assert [e.fc.in_features for e in me.exits] == [25 * 19, 25 * 10, 25 * 5]
    with pytest.raises(ValueError, match="one per layer"):
        build_model({**cfg, "kernel": [5, 3]}, SIG, 10)
    with pytest.raises(ValueError, match="stride"):
        build_model({**cfg, "stride": 0}, SIG, 10)


@pytest.mark.parametrize("depth,width", [(8, 1), (20, 1), (32, 4)])
def test_resnet_param_count_by_formula(depth, width):
    m = build_model({"family": "cifar_resnet", "size": depth, "width": width}, IMG, 100)
    assert count_params(m) == _resnet_params_by_hand(depth, width, 100)


def test_count_params_includes_frozen():
    m = build_model({"family": "mlp", "size": 8}, (4,), 2)
    total = count_params(m)
    for p in m.parameters():
        p.requires_grad_(False)
    assert count_params(m) == total


# ----- FLOPs ------------------------------------------------------------------------------


def test_mlp_flops_by_formula():
    d_in, h, c = 40, 32, 10
    m = build_model({"family": "mlp", "size": h}, (1, d_in), c)
    m.train()
    assert count_flops(m, (1, d_in)) == pytest.approx(2 * (d_in * h + h * h + h * c))
    assert m.training  # restored


def test_cnn1d_flops_by_formula():
    w, length, c = 8, 40, 10
    m = build_model({"family": "cnn1d", "size": w}, (1, length), c)
    conv = 2 * length * 5 * (1 * w + 2 * w * w)
    assert count_flops(m, (1, length)) == pytest.approx(conv + 2 * w * length * c)


@pytest.mark.parametrize(
    "family,sizes,shape,extra",
    [
        ("mlp", [16, 64, 256], SIG, {}),
        ("cnn1d", [4, 16, 64], SIG, {}),
        ("cifar_resnet", [8, 14, 20], IMG, {}),
        ("wrn", [10, 16], IMG, {"width": 1}),
        ("plain_cnn", [2, 4, 6, 8, 10], IMG, {}),
    ],
)
def test_flops_and_params_grow_with_size(family, sizes, shape, extra):
    flops, params = [], []
    for s in sizes:
        m = build_model({"family": family, "size": s, **extra}, shape, 10)
        flops.append(count_flops(m, shape))
        params.append(count_params(m))
    assert all(a < b for a, b in zip(flops, flops[1:])), flops
    assert all(a < b for a, b in zip(params, params[1:])), params


def test_resnet_width_multiplier_scales_flops():
    f1 = count_flops(build_model({"family": "cifar_resnet", "size": 8}, IMG, 10), IMG)
    f4 = count_flops(build_model({"family": "cifar_resnet", "size": 8, "width": 4}, IMG, 10), IMG)
    assert 12 < f4 / f1 < 17  # convs scale with width^2 (the stem only with width)


# ----- multi-exit -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg,shape,n_exits",
    [
        ({"family": "cnn1d", "size": 8, "multi_exit": True}, SIG, 3),
        ({"family": "cnn1d", "size": 8, "depth": 5, "multi_exit": True}, SIG, 5),
        ({"family": "cifar_resnet", "size": 8, "multi_exit": True}, IMG, 3),
    ],
)
def test_multi_exit(cfg, shape, n_exits):
    m = _seeded(cfg, shape, num_classes=6).eval()
    assert m.multi_exit and m.num_exits == n_exits
    x = torch.randn(2, *shape)
    with torch.no_grad():
        outs = m(x)
        assert isinstance(outs, list) and len(outs) == n_exits
        assert all(o.shape == (2, 6) for o in outs)
        f = m.features(x)
        assert f.shape == (2, m.embedding_dim)
        torch.testing.assert_close(m.head(f), outs[-1])
        # running only up to an exit gives that exit's logits
        torch.testing.assert_close(m.forward_exits(x, 0)[-1], outs[0])

    ef = exit_flops(m, shape)
    assert len(ef) == n_exits
    assert all(a < b for a, b in zip(ef, ef[1:])), ef
    assert ef[-1] == pytest.approx(count_flops(m, shape), rel=0.05)


def test_multi_exit_final_exit_matches_single_exit_architecture():
    single = build_model({"family": "cifar_resnet", "size": 14}, IMG, 10)
    multi = build_model({"family": "cifar_resnet", "size": 14, "multi_exit": True}, IMG, 10)
    extra_heads = (16 + 1) * 10 + (32 + 1) * 10
    assert count_params(multi) == count_params(single) + extra_heads
    assert multi.embedding_dim == single.embedding_dim == 64


def test_exit_flops_rejects_single_exit():
    m = build_model({"family": "mlp", "size": 8}, SIG, 10)
    with pytest.raises(ValueError, match="multi-exit"):
        exit_flops(m, SIG)


@pytest.mark.parametrize("family,size", [("wrn", 16), ("plain_cnn", 4), ("mlp", 8)])
def test_multi_exit_unsupported_family(family, size):
    with pytest.raises(ValueError, match="multi_exit is not supported.*cifar_resnet"):
        build_model({"family": family, "size": size, "multi_exit": True}, IMG, 10)


# ----- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"family": "cifar_resnet", "size": 21}, r"6n\+2.*20, 32, 44, 56, 110.*got 21"),
        ({"family": "cifar_resnet", "size": 2}, r"6n\+2"),
        ({"family": "wrn", "size": 20, "width": 2}, r"6n\+4.*16, 28, 40.*got 20"),
        ({"family": "plain_cnn", "size": 11}, r"2\.\.10"),
        ({"family": "plain_cnn", "size": 1}, r"2\.\.10"),
        ({"family": "cifar_resnet", "size": 20, "width": 0}, r"width"),
        ({"family": "mlp", "size": 0}, r"positive integer"),
        ({"family": "mlp", "size": 8, "depth": 0}, r"depth"),
        ({"family": "resnet", "size": 20}, r"unknown model family 'resnet'.*cifar_resnet"),
        ({"size": 20}, r"'family'"),
    ],
)
def test_bad_configs_raise_helpful_value_error(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_model(cfg, IMG, 10)


def test_image_families_reject_signal_input():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model({"family": "cifar_resnet", "size": 8}, SIG, 10)


def test_unrelated_keys_are_ignored():
    m = build_model({"family": "mlp", "size": 8, "checkpoint": "/nowhere.pt"}, SIG, 10)
    assert m(torch.randn(2, *SIG)).shape == (2, 10)


# ----- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg,name",
    [
        ({"family": "mlp", "size": 32}, "mlp-2x32"),
        ({"family": "mlp", "size": 128, "depth": 3}, "mlp-3x128"),
        ({"family": "cnn1d", "size": 16}, "cnn1d-w16"),
        ({"family": "cnn1d", "size": 16, "depth": 4}, "cnn1d-w16-d4"),
        ({"family": "cnn1d", "size": 64, "multi_exit": True}, "cnn1d-w64-me"),
        ({"family": "cifar_resnet", "size": 56}, "resnet56"),
        ({"family": "cifar_resnet", "size": 32, "width": 4}, "resnet32x4"),
        ({"family": "cifar_resnet", "size": 8, "width": 4}, "resnet8x4"),
        ({"family": "cifar_resnet", "size": 20, "multi_exit": True}, "resnet20-me"),
        ({"family": "wrn", "size": 40, "width": 2}, "wrn-40-2"),
        ({"family": "wrn", "size": 16}, "wrn-16-2"),
        ({"family": "plain_cnn", "size": 10}, "plain_cnn-10"),
    ],
)
def test_arch_name(cfg, name):
    assert arch_name(cfg) == name


# ----- identity: the package builds exactly what the single module built ------------------

#: sha256 (first 16 hex digits) of every state-dict tensor, in order, of each model built after
#: torch.manual_seed(0) by trainables/models.py on main before it became a package (x86-64, AVX2)
MAIN_CHECKSUMS = [
    ({"family": "mlp", "size": 32}, (1, 40), 10, "3df6e8948e0246d1"),
    ({"family": "cnn1d", "size": 16, "kernel": [5, 3, 3], "stride": 2, "padding": 1}, (1, 40), 10, "72c7864b735162e1"),
    ({"family": "cnn1d", "size": 8, "multi_exit": True}, (1, 40), 10, "ce315c72fb69b685"),
    ({"family": "cifar_resnet", "size": 8}, (3, 32, 32), 100, "2a3e84b8850d526e"),
    ({"family": "cifar_resnet", "size": 14, "width": 2, "multi_exit": True}, (3, 32, 32), 10, "e1f5b15769e6c104"),
    ({"family": "wrn", "size": 10, "width": 2}, (3, 32, 32), 10, "a21c0b6ef1e5d19e"),
    ({"family": "plain_cnn", "size": 4}, (3, 32, 32), 100, "3f5f039c98a8755b"),
]


@pytest.mark.parametrize("cfg,shape,nc,digest", MAIN_CHECKSUMS, ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_weights_are_bit_identical_to_main(cfg, shape, nc, digest):
    import hashlib

    torch.manual_seed(0)
    h = hashlib.sha256()
    for k, v in build_model(cfg, shape, nc).state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    assert h.hexdigest()[:16] == digest


# ----- the registry's facts ---------------------------------------------------------------


def test_family_entries_hold_their_facts():
    from trainables.models import family_entry, family_option_specs, family_size_spec, family_sizes, size_order
    from trainables.options import Option

    specs = family_option_specs("cnn1d")
    assert set(specs) == {"depth", "kernel", "stride", "padding"} and all(isinstance(o, Option) for o in specs.values())
    assert specs["depth"].default == 3 and specs["depth"].minimum == 1
    assert family_options("cnn1d") == {"depth": 3, "kernel": 5, "stride": 1, "padding": "same"}
    assert family_size_spec("mlp").types == ("integer",) and family_size_spec("torchvision").types == ("string",)
    assert family_sizes("plain_cnn") == [2, 4, 6, 8, 10] and family_sizes("wrn") is None
    assert "resnet18" in family_sizes("torchvision") and "fasterrcnn_resnet50_fpn" not in family_sizes("torchvision")
    assert size_order({"family": "cifar_resnet", "size": 56}) == 56.0
    for name in available_families():
        entry = family_entry(name)
        assert entry.name == name and entry.stages is not None  # every built-in family says where its stages are
    with pytest.raises(ValueError, match=r"unknown model family 'cifar_resnt'.*did you mean cifar_resnet"):
        family_entry("cifar_resnt")


def test_size_key_keeps_numbers_as_before_and_names_as_they_are():
    from trainables.config import size_key

    assert [size_key(s) for s in (8, 8.0, "8", 2.5, "resnet18", "vit_b_16")] == ["8", "8", "8", "2.5", "resnet18",
                                                                                  "vit_b_16"]


# ----- torchvision models by name -----------------------------------------------------------

#: a model of each torchvision architecture that takes 32x32 inputs (all 80 were checked: see the README)
TV32 = ["resnet18", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
        "regnet_x_400mf", "densenet121", "convnext_tiny", "vgg11_bn", "swin_t", "shufflenet_v2_x1_0", "squeezenet1_1",
        "mnasnet0_5", "googlenet"]


@pytest.mark.parametrize("name", TV32)
def test_torchvision_models_build_and_run_at_32x32_on_meta(name):
    from trainables.models import build_meta

    m = build_meta({"family": "torchvision", "size": name}, IMG, 100)
    out = m(torch.zeros(2, *IMG, device="meta"))
    assert out.shape == (2, 100) and count_params(m) > 0 and count_flops(m, IMG) > 0
    assert arch_name({"family": "torchvision", "size": name}) == f"tv-{name}"


def test_torchvision_model_trains_on_the_cpu_reproducibly_and_never_downloads(monkeypatch):
    import torch.hub

    def no_download(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    cfg = {"family": "torchvision", "size": "mobilenet_v3_small", "dropout": 0.1}
    a, b, c = _seeded(cfg, IMG), _seeded(cfg, IMG), build_model(cfg, IMG, 10)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    assert a.classifier[2].p == 0.1
    x = torch.randn(4, *IMG)
    loss = torch.nn.functional.cross_entropy(a(x), torch.arange(4))
    loss.backward()
    assert all(p.grad is not None for p in a.parameters())
    with pytest.raises(ValueError, match="never downloaded"):
        build_model({**cfg, "weights": "IMAGENET1K_V1"}, IMG, 10)


@pytest.mark.parametrize("cfg,match", [
    ({"size": "resnt18"}, r"unknown torchvision model 'resnt18'; did you mean resnet18"),
    ({"size": 18}, r"must be a string"),
    ({"size": "resnet18", "dropout": 0.1}, r"resnet18 has no option 'dropout'.*its options: groups"),
    ({"size": "resnet18", "zero_init_residul": True}, r"did you mean zero_init_residual"),
    ({"size": "resnext50_32x4d", "groups": 2}, r"has no option 'groups' \(torchvision fixes it"),
    ({"size": "mobilenet_v2", "width_mult": "wide"}, r"width_mult' must be a number"),
    ({"size": "googlenet", "aux_logits": True}, r"aux_logits' must be false"),
    ({"size": "vit_b_16"}, r"vit_b_16 cannot take inputs of shape \(3, 32, 32\).*set its option image_size: 32"),
    ({"size": "alexnet"}, r"alexnet cannot take inputs.*use larger images"),
    ({"size": "maxvit_t"}, r"maxvit_t cannot take inputs.*use larger images"),
    ({"size": "resnet18", "channels": "stem"}, r"channels' must be one of 'repeat', 'adapt'"),
])
def test_torchvision_bad_configs_are_one_line_errors(cfg, match):
    from trainables.models import build_meta

    with pytest.raises(ValueError, match=match) as info:
        build_meta({"family": "torchvision", **cfg}, IMG, 10)
    assert "\n" not in str(info.value)


def test_torchvision_constructor_options_are_the_builders_free_ones():
    from trainables.models import family_option_specs

    mob = family_option_specs("torchvision", "mobilenet_v2")
    assert mob["width_mult"].default == 1.0 and mob["dropout"].default == 0.2 and mob["channels"].default == "repeat"
    assert "num_classes" not in mob and "norm_layer" not in mob and "block" not in mob
    assert "dropout" not in family_option_specs("torchvision", "efficientnet_b0")  # fixed per model by torchvision
    assert family_option_specs("torchvision", "vit_b_16")["image_size"].default == 224
    assert family_options("torchvision", "resnet18") == {"channels": "repeat", "zero_init_residual": False, "groups": 1,
                                                         "width_per_group": 64, "replace_stride_with_dilation": None}
    assert family_options("torchvision") == {"channels": "repeat"}
    cfg = {"family": "torchvision", "size": "vit_b_16", "image_size": 32}
    assert arch_name(cfg) == "tv-vit_b_16-image_size32"
    assert arch_name({"family": "torchvision", "size": "mobilenet_v2", "width_mult": 0.5}) == "tv-mobilenet_v2-width_mult0.5"


def test_torchvision_ladder_is_ordered_by_parameters():
    from trainables.models import size_order

    ladder = ["resnet18", "resnet34", "resnet50", "resnet101"]
    orders = [size_order({"family": "torchvision", "size": n}, 100) for n in ladder]
    assert orders == sorted(orders) and orders[0] == 11_227_812  # resnet18 with a 100-class head


def test_torchvision_flops_match_the_published_gflops():
    """torchvision's model cards give GFLOPS (multiply-adds) at 224x224; counted here on the meta device,
    attention (ViT, Swin) included."""
    from torchvision.models import get_model_weights

    from trainables.models import build_meta

    for name in ("resnet18", "mobilenet_v2", "vit_b_16", "swin_t"):
        macs = get_model_weights(name).DEFAULT.meta["_ops"] * 1e9
        m = build_meta({"family": "torchvision", "size": name}, (3, 224, 224), 1000)
        assert count_flops(m, (3, 224, 224)) / 2 == pytest.approx(macs, rel=1e-3), name


def test_attention_is_counted_even_where_pytorch_takes_its_fused_fast_path():
    """In eval mode without gradients nn.MultiheadAttention runs one fused kernel, and on the CPU its
    attention a fused kernel too, that the FLOP counter does not see; count_flops switches both off, so the
    count is the matmuls by hand."""
    from torch.utils.flop_counter import FlopCounterMode

    n, d = 6, 16

    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(d, 2, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    m = Attn().eval()
    by_hand = 2 * (n * d * 3 * d + 2 * n * n * d + n * d * d)  # in-projection, QK^T and AV, out-projection
    with torch.no_grad(), FlopCounterMode(display=False) as naive:
        m(torch.zeros(2, n, d))
    assert naive.get_total_flops() / 2 < by_hand  # the fused path hides work from a plain count
    assert count_flops(m, (n, d)) == by_hand


def test_torchvision_grayscale_inputs_repeat_or_adapt():
    gray = (1, 28, 28)
    m = _seeded({"family": "torchvision", "size": "resnet18"}, gray).eval()
    x = torch.rand(2, *gray)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x.expand(-1, 3, -1, -1)))  # the channel repeated, nothing learned
    assert m.conv1.in_channels == 3
    adapted = build_model({"family": "torchvision", "size": "resnet18", "channels": "adapt"}, (2, 28, 28), 10)
    assert adapted.conv1.in_channels == 2 and adapted(torch.rand(2, 2, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="has 2 channels: set the model's option channels: adapt"):
        build_model({"family": "torchvision", "size": "resnet18"}, (2, 28, 28), 10)


def test_meta_builds_allocate_nothing_and_draw_no_random_numbers():
    from trainables.models import build_meta

    state = torch.random.get_rng_state()
    m = build_meta({"family": "torchvision", "size": "regnet_y_400mf"}, IMG, 10)  # its constructor computes with tensors
    assert all(p.device.type == "meta" for p in m.parameters())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert nn_registration_restored()
    with torch.device("meta"):  # the spec's check builds this way
        assert count_params(build_model({"family": "torchvision", "size": "regnet_x_400mf"}, IMG, 10)) > 0


def nn_registration_restored() -> bool:
    from torch import nn

    return nn.Module.register_parameter.__qualname__ == "Module.register_parameter"
