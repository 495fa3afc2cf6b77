"""Models: registry, taps, any-size logits, bilinear upsampling, fc6/fc7 transplant, weights,
staged init. CPU only, tiny inputs."""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fcn_dist.errors import FcnError, SpecError, WeightsError
from fcn_dist.models import (
    FCN,
    bilinear_kernel,
    create_backbone,
    create_model,
    freeze_backbone,
    list_backbones,
    list_models,
    param_groups,
    stage_init,
)
from fcn_dist.models import backbones as backbones_mod
from fcn_dist.models.backbones import Tap
from fcn_dist.models.fcn import FCNHead, Upsample

REQUIRED_BACKBONES = {
    "vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "resnet101",
    "mobilenet_v3_small", "mobilenet_v3_large",
}
MODES = ("learned", "fixed", "interp")


def _randomise_head(model: FCN, seed: int = 0) -> None:
    """Give the head 'trained' weights: non-zero scores, perturbed upsampling kernels."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


# ------------------------------------------------------------------------------ registry


def test_registry_names() -> None:
    assert REQUIRED_BACKBONES <= set(list_backbones())
    models = list_models()
    assert len(models) == len(set(models)) == 3 * len(list_backbones())
    for b in list_backbones():
        for v in ("32s", "16s", "8s"):
            assert f"fcn{v}_{b}" in models


def test_unknown_names_raise_spec_error_listing_valid_ones() -> None:
    with pytest.raises(SpecError, match="fcn8s_vgg16") as info:
        create_model("fcn4s_vgg16", 3)
    assert isinstance(info.value, FcnError)
    with pytest.raises(SpecError, match="interp"):
        create_model("fcn32s_resnet18", 3, upsample="nearest")
    with pytest.raises(SpecError, match="num_classes"):
        create_model("fcn32s_resnet18", 0)


# ------------------------------------------------------------------------ every model


@pytest.mark.parametrize("name", list_models())
def test_every_model_any_size_forward_backward_and_taps(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 3)
    variant, backbone = name[3:].split("_", 1)
    assert (model.variant, model.backbone_name, model.num_classes) == (variant, backbone, 3)
    assert model.name == name

    x = torch.randn(2, 3, 33, 47)  # odd sizes, not multiples of 32
    # declared taps match the real feature maps
    model.eval()
    with torch.no_grad():
        feats = model.backbone(x)
    assert set(feats) == set(model.backbone.taps) == {"s8", "s16", "s32"}
    for tap, (channels, stride, _) in model.backbone.taps.items():
        f = feats[tap]
        assert f.shape[1] == channels, (tap, f.shape)
        for got, size in zip(f.shape[-2:], x.shape[-2:]):
            assert got in (size // stride, math.ceil(size / stride)), (tap, stride, f.shape)

    # training forward/backward: exact input size, gradients reach every parameter
    model.train()
    out = model(x)
    assert out.shape == (2, 3, 33, 47)
    labels = torch.randint(0, 3, (2, 33, 47))
    F.cross_entropy(out, labels).backward()  # non-zero gradients even with all-zero logits
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters unused in forward (DDP would need find_unused): {no_grad[:5]}"
    assert model.head.score_s32.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_logits_match_input_size_for_odd_sizes(variant: str, mode: str) -> None:
    torch.manual_seed(0)
    model = create_model(f"fcn{variant}_mobilenet_v3_small", 2, upsample=mode).eval()
    _randomise_head(model)
    with torch.no_grad():
        for h, w in [(97, 131), (33, 47), (32, 32), (64, 96), (65, 63), (17, 9)]:
            out = model(torch.randn(1, 3, h, w))
            assert out.shape == (1, 2, h, w), (h, w, out.shape)
            assert torch.isfinite(out).all()


def test_vgg_odd_size_97x131() -> None:
    # VGG pools with floor: the upsampling has to *grow* (output_padding) to reach 97x131.
    model = create_model("fcn8s_vgg16", 4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, 4, 97, 131)


@pytest.mark.parametrize("mode", MODES)
def test_upsample_reaches_any_target_size(mode: str) -> None:
    up = Upsample(2, 8, mode)
    x = torch.randn(1, 2, 3, 5)
    for th in range(3 * 8 - 9, 3 * 8 + 12):
        for tw in (5 * 8 - 3, 5 * 8, 5 * 8 + 7, 5 * 8 + 9):
            assert up(x, (th, tw)).shape == (1, 2, th, tw)


# ------------------------------------------------------------------------- head details


def test_score_layers_zero_initialised_without_relu() -> None:
    model = create_model("fcn8s_resnet18", 5, upsample="interp").eval()
    for tap in ("s32", "s16", "s8"):
        conv = getattr(model.head, f"score_{tap}")
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
        assert conv.weight.abs().sum() == 0 and conv.bias.abs().sum() == 0
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert model(x).abs().max() == 0  # zero scores -> zero logits
        model.head.score_s32.bias.fill_(-1.0)
        out = model(x)
    # no ReLU after the scores: negative logits survive
    torch.testing.assert_close(out, torch.full_like(out, -1.0))


def test_variants_only_differ_in_fused_taps() -> None:
    names = {v: {n for n, _ in create_model(f"fcn{v}_mobilenet_v3_small", 3).named_parameters()}
             for v in ("32s", "16s", "8s")}
    assert names["16s"] - names["32s"] == {"head.score_s16.weight", "head.score_s16.bias"}
    assert names["8s"] - names["16s"] == {"head.score_s8.weight", "head.score_s8.bias"}
    assert names["32s"] <= names["16s"] <= names["8s"]


def test_separate_models_do_not_share_score_layers() -> None:
    a = create_model("fcn16s_mobilenet_v3_small", 3)
    b = create_model("fcn16s_mobilenet_v3_small", 3)
    assert a.head.score_s16.weight.data_ptr() != b.head.score_s16.weight.data_ptr()


def test_skip_scale_scales_pool4_and_pool3() -> None:
    taps = {"s8": Tap(4, 8, 3.5), "s16": Tap(4, 16, 7.5), "s32": Tap(4, 32, 15.5)}
    feats = {"s8": torch.randn(1, 4, 8, 8), "s16": torch.randn(1, 4, 4, 4),
             "s32": torch.randn(1, 4, 2, 2)}
    plain = FCNHead(taps, ("s32", "s16", "s8"), 2, "interp", skip_scale=False)
    scaled = FCNHead(taps, ("s32", "s16", "s8"), 2, "interp", skip_scale=True)
    for tap, factor in (("s16", 0.01), ("s8", 1e-4)):
        with torch.no_grad():
            for head in (plain, scaled):
                for t in ("s32", "s16", "s8"):
                    conv = getattr(head, f"score_{t}")
                    conv.weight.fill_(1.0 if t == tap else 0.0)
            a, b = plain(feats, (64, 64)), scaled(feats, (64, 64))
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a * factor, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------- bilinear kernels


def test_bilinear_kernel_values() -> None:
    k1 = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(bilinear_kernel(4), k1[:, None] * k1[None, :])
    k16 = bilinear_kernel(16)  # x8: peak pair in the middle, symmetric, each 1-D tap sums to 8
    torch.testing.assert_close(k16, k16.flip(0).flip(1))
    torch.testing.assert_close(k16.sum(), torch.tensor(64.0))


@pytest.mark.parametrize("mode", ["learned", "fixed"])
@pytest.mark.parametrize("factor", [2, 8])
def test_transposed_conv_is_bilinear_interpolation(mode: str, factor: int) -> None:
    up = Upsample(3, factor, mode)
    if mode == "learned":
        assert up.weight.requires_grad and up.weight.shape == (3, 3, 2 * factor, 2 * factor)
        # identity across channels: channel 0 does not leak into channel 1
        assert up.weight[0, 1].abs().sum() == 0
    else:
        assert not any(True for _ in up.parameters())  # frozen
    h, w = 6, 7
    th, tw = h * factor, w * factor
    b = factor  # border rows/cols where zero padding differs from interpolate's clamping
    with torch.no_grad():
        # a constant stays constant in the interior
        const = up(torch.full((1, 3, h, w), 2.5), (th, tw))
        inner = const[..., b:-b, b:-b]
        torch.testing.assert_close(inner, torch.full_like(inner, 2.5))
        # a linear ramp over input pixel centres is reproduced at output pixel centres
        ramp = torch.arange(w, dtype=torch.float32).expand(1, 3, h, w)
        out = up(ramp, (th, tw))
        expect = ((torch.arange(tw) + 0.5) / factor - 0.5).expand(1, 3, th, tw)
        torch.testing.assert_close(out[..., b:-b, b:-b], expect[..., b:-b, b:-b], atol=1e-5, rtol=0)
        # random input: equals bilinear interpolation (align_corners=False) in the interior
        x = torch.randn(1, 3, h, w)
        ref = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False)
        torch.testing.assert_close(up(x, (th, tw))[..., b:-b, b:-b], ref[..., b:-b, b:-b],
                                   atol=1e-5, rtol=0)


# --------------------------------------------------------------------- VGG fc6/fc7, weights


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory: pytest.TempPathFactory):
    """A torchvision vgg16 state dict (random, with non-zero classifier biases) on disk."""
    torch.manual_seed(1)
    net = torchvision.models.vgg16()
    with torch.no_grad():
        for i in (0, 3):
            net.classifier[i].bias.normal_(0.0, 0.5)  # torchvision inits them to 0: make them count
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(net.state_dict(), path)
    return path, net.eval()


def test_fc6_fc7_transplant_reproduces_vgg_classifier(vgg16_file) -> None:
    path, net = vgg16_file
    backbone = create_backbone("vgg16", path).eval()
    pool5 = torch.randn(2, 512, 7, 7)
    with torch.no_grad():
        ref = net.classifier[:5](torch.flatten(pool5, 1))  # fc6, relu, drop, fc7, relu
        ours = backbone.relu7(backbone.fc7(backbone.relu6(backbone.fc6(pool5))))
    assert ours.shape == (2, 4096, 7, 7)
    # fc6 pads by 3: only the centre pixel's 7x7 window is exactly the Linear's input
    assert (ref > 0).float().mean() > 0.1
    torch.testing.assert_close(ours[:, :, 3, 3], ref, atol=1e-4, rtol=1e-4)

    # fc6/fc7 belong to the backbone: freezing it freezes them, not the head
    model = freeze_backbone(FCN(backbone, "32s", 3))
    assert not model.backbone.fc6.weight.requires_grad and not model.backbone.fc7.bias.requires_grad
    assert all(p.requires_grad for p in model.head.parameters())
    names = [id(p) for g in param_groups(model, 1e-4) for p in g["params"]]
    assert id(model.backbone.fc6.weight) not in names


def test_local_torchvision_state_dict_loads(vgg16_file) -> None:
    path, net = vgg16_file
    model = create_model("fcn8s_vgg16", 3, backbone_weights=str(path))
    sd = net.state_dict()
    torch.testing.assert_close(model.backbone.features[0].weight, sd["features.0.weight"])
    torch.testing.assert_close(model.backbone.features[28].bias, sd["features.28.bias"])
    torch.testing.assert_close(model.backbone.fc6.weight.flatten(1), sd["classifier.0.weight"])
    torch.testing.assert_close(model.backbone.fc6.bias, sd["classifier.0.bias"])
    torch.testing.assert_close(model.backbone.fc7.weight.flatten(1), sd["classifier.3.weight"])
    torch.testing.assert_close(model.backbone.fc7.bias, sd["classifier.3.bias"])


def test_mismatched_state_dict_fails_naming_keys(vgg16_file, tmp_path) -> None:
    path, _ = vgg16_file
    sd = torch.load(path, weights_only=True)
    sd["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    del sd["classifier.3.bias"]
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(WeightsError) as info:
        create_backbone("vgg16", bad)
    msg = str(info.value)
    assert "features.0.weight" in msg and "classifier.3.bias" in msg and str(bad) in msg
    assert "features.2.weight" not in msg  # only the offending keys

    # a different architecture's file is rejected, not half-loaded
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "mnv3.pth")
    with pytest.raises(WeightsError, match="resnet18"):
        create_backbone("resnet18", tmp_path / "mnv3.pth")
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("resnet18", tmp_path / "nope.pth")


def test_imagenet_offline_fails_fast(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url, cache = backbones_mod.imagenet_weights_file("resnet18")
    assert str(cache).startswith(str(tmp_path)) and not cache.exists()
    host = url.split("/")[2]
    if backbones_mod._probe(host, 443, 3.0) is None:
        pytest.skip("network available: the offline path cannot be exercised here")
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        create_model("fcn32s_resnet18", 3, backbone_weights="imagenet")
    assert time.monotonic() - start < 30
    msg = str(info.value)
    assert cache.name in msg and "hub/checkpoints" in msg and "backbone_weights" in msg


def test_imagenet_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch) -> None:
    # What the offline error tells the user to do works: a file in the cache is used as is.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _, cache = backbones_mod.imagenet_weights_file("mobilenet_v3_small")
    cache.parent.mkdir(parents=True)
    torch.manual_seed(3)
    sd = torchvision.models.mobilenet_v3_small().state_dict()
    torch.save(sd, cache)
    backbone = create_backbone("mobilenet_v3_small", "imagenet")
    torch.testing.assert_close(backbone.features["0"][0].weight, sd["features.0.0.weight"])


# ------------------------------------------------------------------------- staged init


@pytest.mark.parametrize("skip_scale", [False, True])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stage", [("32s", "16s"), ("16s", "8s")])
def test_stage_init_reproduces_previous_output(stage, mode: str, skip_scale: bool) -> None:
    old_v, new_v = stage
    torch.manual_seed(0)
    old = create_model(f"fcn{old_v}_resnet18", 3, upsample=mode, skip_scale=skip_scale)
    _randomise_head(old, seed=1)  # a 'trained' previous stage
    old.eval()
    torch.manual_seed(1)
    new = create_model(f"fcn{new_v}_resnet18", 3, upsample=mode, skip_scale=skip_scale)
    # DDP-style prefixes are accepted
    state = {f"module.{k}": v.clone() for k, v in old.state_dict().items()}
    assert stage_init(new, state) is new
    new.eval()
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        ref = old(x)
        out = new(x)
        assert ref.abs().max() > 0.01
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        # the new skip is live: once its score layer moves, the output moves
        new_tap = "s16" if new_v == "16s" else "s8"
        getattr(new.head, f"score_{new_tap}").bias.fill_(0.5)
        assert (new(x) - ref).abs().max() > 0.1


def test_stage_init_rejects_states_from_other_models() -> None:
    m16 = create_model("fcn16s_mobilenet_v3_small", 3)
    with pytest.raises(WeightsError, match="head.score_s8"):
        stage_init(m16, create_model("fcn8s_mobilenet_v3_small", 3).state_dict())
    with pytest.raises(WeightsError, match="head.score_s32.weight"):
        stage_init(m16, create_model("fcn32s_mobilenet_v3_small", 5).state_dict())
    with pytest.raises(WeightsError, match="features"):
        stage_init(m16, create_model("fcn32s_resnet18", 3).state_dict())
    with pytest.raises(WeightsError, match="head.up_out.weight"):
        m32 = create_model("fcn32s_mobilenet_v3_small", 3, upsample="interp")
        stage_init(m16, m32.state_dict())


# -------------------------------------------------------------------------- param groups


def test_param_groups_no_decay_on_biases_and_norms() -> None:
    model = create_model("fcn8s_resnet18", 3)
    groups = param_groups(model, 5e-4)
    decay, no_decay = groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    assert id(model.backbone.bn1.weight) in ids and id(model.backbone.bn1.bias) in ids
    assert id(model.head.score_s8.bias) in ids
    assert id(model.backbone.conv1.weight) in {id(p) for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    torch.optim.SGD(groups, lr=0.1)  # usable as is

    freeze_backbone(model)
    trainable = sum(len(g["params"]) for g in param_groups(model, 5e-4))
    assert trainable == len(list(model.head.parameters()))
    freeze_backbone(model, frozen=False)
    assert all(p.requires_grad for p in model.parameters())


# ------------------------------------------------- torchvision layout: keys, outputs, registry

_HEAD_KEYS = [f"head.score_{t}.{p}" for t in ("s32", "s16", "s8") for p in ("weight", "bias")] + [
    f"head.up_{u}.weight" for u in ("s16", "s8", "out")
]


def _torchvision_keys(name: str) -> list[str]:
    """A torchvision classifier's state-dict keys as the backbone holds them (classifier off)."""
    with torch.device("meta"):
        keys = list(getattr(torchvision.models, name)().state_dict())
    # VGG keeps fc6/fc7 (its classifier.0/.3 as convs); otherwise the classifier is dropped
    fc = {"classifier.0.": "fc6.", "classifier.3.": "fc7."} if name.startswith("vgg") else {}
    out = []
    for key in keys:
        head = key[: len("classifier.0.")]
        if head in fc:
            out.append(fc[head] + key[len(head):])
        elif not key.startswith(("fc.", "classifier.")):
            out.append(key)
    return out


@pytest.mark.parametrize("name", list_backbones())
def test_state_dict_keys_are_torchvision_keys_in_torchvision_order(name: str) -> None:
    # Old checkpoints and optimizer states (parameter order) keep loading.
    expected = ["backbone." + k for k in _torchvision_keys(name)]
    with torch.device("meta"):
        model = create_model(f"fcn8s_{name}", 3)
    assert list(model.state_dict()) == expected + _HEAD_KEYS


def _reference_taps(net: nn.Module, name: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The taps computed by hand from a torchvision classifier's own modules."""
    if name.startswith("resnet"):
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        s8 = net.layer2(net.layer1(x))
        s16 = net.layer3(s8)
        return {"s8": s8, "s16": s16, "s32": net.layer4(s16)}
    at = {"mobilenet_v3_small": (3, 8, 12), "mobilenet_v3_large": (6, 12, 16)}[name]
    out = {}
    for i, layer in enumerate(net.features):
        x = layer(x)
        if i in at:
            out[("s8", "s16", "s32")[at.index(i)]] = x
    return out


@pytest.mark.parametrize("name", [b for b in list_backbones() if not b.startswith("vgg")])
def test_taps_are_bit_identical_to_torchvision_modules(name: str) -> None:
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    backbone = create_backbone(name)
    backbones_mod.load_backbone_state(backbone, net.state_dict())
    backbone.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = _reference_taps(net, name, x)
        feats = backbone(x)
    assert list(feats) == ["s8", "s16", "s32"]
    for tap, (channels, stride, _) in backbone.taps.items():
        assert torch.equal(feats[tap], ref[tap]), tap
        assert feats[tap].shape == (2, channels, 64 // stride, 96 // stride)


def test_registry_is_spec_backbones_in_order() -> None:
    from fcn_dist import spec
    from fcn_dist.models import fcn as fcn_mod

    assert list_backbones() == list(spec.BACKBONES)
    assert tuple(fcn_mod.VARIANT_TAPS) == spec.VARIANTS
    assert list_models()[:3] == [f"fcn{v}_{spec.BACKBONES[0]}" for v in spec.VARIANTS]


def test_stage_init_strips_nested_wrapper_prefixes_without_touching_the_input() -> None:
    torch.manual_seed(0)
    old = create_model("fcn32s_mobilenet_v3_small", 3)
    _randomise_head(old)
    state = {f"_orig_mod.module.{k}": v for k, v in old.state_dict().items()}  # compile(DDP(m))
    keys = list(state)
    new = stage_init(create_model("fcn16s_mobilenet_v3_small", 3), state)
    assert list(state) == keys  # the caller's dict is not edited
    torch.testing.assert_close(new.head.score_s32.weight, old.head.score_s32.weight, rtol=0, atol=0)
    assert new.head.score_s16.weight.abs().sum() == 0


def test_stage_init_refuses_a_parent_without_its_own_score_layer():
    """Issue 17.8: a 32s state missing score_s32 (or with a mis-shaped one) is an error naming
    it; only the layer new in this stage (score_s16) is zero-filled."""
    from fcn_dist.errors import WeightsError

    prev = create_model("fcn32s_resnet18", 3).state_dict()
    child = create_model("fcn16s_resnet18", 3)
    for drop in ("head.score_s32.weight", "head.score_s32.bias"):
        bad = {k: v for k, v in prev.items() if k != drop}
        with pytest.raises(WeightsError, match=drop.replace(".", r"\.")):
            stage_init(child, bad)
    shaped = dict(prev, **{"head.score_s32.bias": torch.zeros(5)})
    with pytest.raises(WeightsError, match=r"head\.score_s32\.bias"):
        stage_init(child, shaped)
    stage_init(child, prev)  # the whole parent: fine, score_s16 starts at zero
    assert float(child.head.score_s16.weight.abs().sum()) == 0.0
    stage_init(child, child.state_dict())  # the same variant: a plain load


# ------------------------------------------------------------ alignment (issue 17.1)
#
# Where a feature is centred is a property of the kernel sizes, strides and paddings. To measure
# it from a gradient without the noise of random weights (+-1-3 px for one feature of a random
# ResNet) or the pull of the image border, the backbone runs with uniform weights on a ring:
# circular padding along the measured axis (zeros along the other), every conv an average over
# its window, max pools as average pools of the same geometry, BN as identity, a constant
# input. Along that axis every activation's local slope is then the same everywhere, so the
# gradient of one feature w.r.t. the input is its receptive field's weights (plus, for SE
# blocks, a constant along the ring), and the phase of the first Fourier coefficient along the
# axis gives the centre exactly, however far the field wraps.

_RING = 256  # input pixels along the measured axis (a multiple of 32, wider than fc6's 224)


def _geometric_copy(module: nn.Module, axis: int) -> nn.Module:
    """A copy of ``module`` with uniform weights, circular along ``axis`` (-1 W, -2 H), eval."""
    net = copy.deepcopy(module).eval()

    def split(padding) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        if axis == -1:
            return (pw, pw, 0, 0), (ph, 0)  # (circular pad, what the layer still pads with 0)
        return (0, 0, ph, ph), (0, pw)

    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                ring, child.padding = split(child.padding)
                setattr(parent, child_name, nn.Sequential(nn.CircularPad2d(ring), child))
            elif isinstance(child, nn.MaxPool2d):
                ring, zeros = split(child.padding)
                pool = nn.AvgPool2d(child.kernel_size, child.stride, padding=zeros)
                setattr(parent, child_name, nn.Sequential(nn.CircularPad2d(ring), pool))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
                m.reset_running_stats()
    return net


def _circular_centre(grad: torch.Tensor, axis: int) -> float:
    """Centre (in pixels, mod n) of a non-negative (..., H, W) map along ``axis`` (-2 or -1)."""
    profile = grad.abs().sum(dim=[d for d in range(grad.dim()) if d != grad.dim() + axis])
    n = profile.numel()
    phase = torch.exp(2j * math.pi * torch.arange(n, dtype=torch.float64) / n)
    z = (profile.double() * phase).sum()
    assert abs(z) > 0.01 * profile.sum(), "receptive field too wide for the torus"
    return math.atan2(z.imag, z.real) * n / (2 * math.pi) % n


def _wrapped(a: float, n: int) -> float:
    """``a`` wrapped into [-n/2, n/2)."""
    return (a + n / 2) % n - n / 2


@pytest.mark.parametrize("name", list_backbones())
def test_declared_tap_offsets_are_the_measured_receptive_field_centres(name: str) -> None:
    backbone = create_backbone(name)
    for axis, shape in ((-1, (32, _RING)), (-2, (_RING, 32))):
        net = _geometric_copy(backbone, axis)
        x = torch.ones(1, 3, *shape, requires_grad=True)
        feats = net(x)
        for tap, declared in backbone.taps.items():
            f = feats[tap]
            i = f.shape[axis] // 2  # one interior feature (all are, on a ring)
            index = (0, slice(None), 0, i) if axis == -1 else (0, slice(None), i, 0)
            (grad,) = torch.autograd.grad(f[index].sum(), x, retain_graph=True)
            centre = _circular_centre(grad[0], axis)
            offset = _wrapped(centre - declared.stride * i, _RING)
            assert abs(offset - declared.offset) < 0.5, (tap, axis, offset, declared)


def _meta_taps(name: str, size: tuple[int, int]) -> tuple[dict, dict[str, tuple[int, int]]]:
    """A backbone's declared taps and their map sizes for an input of ``size`` (on meta)."""
    with torch.device("meta"):
        backbone = create_backbone(name)
        feats = backbone(torch.empty(1, 3, *size))
    return backbone.taps, {t: tuple(f.shape[-2:]) for t, f in feats.items()}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list_backbones())
def test_head_puts_each_tap_score_where_its_feature_is_centred(name: str, mode: str) -> None:
    """A unit score at feature k of a tap comes out of the head centred on input pixel
    stride * k + offset (both axes, every mode): each tap's score is upsampled, fused and
    finally placed where its feature is."""
    size = (257, 321)  # odd: output_padding / cropping are exercised too
    taps, shapes = _meta_taps(name, size)
    head = FCNHead(taps, ("s32", "s16", "s8"), 2, mode).eval()
    pos = torch.arange(size[0], dtype=torch.float64), torch.arange(size[1], dtype=torch.float64)
    for tap in ("s32", "s16", "s8"):
        feats = {t: torch.zeros(1, taps[t].channels, *shapes[t]) for t in shapes}
        k = [n // 2 for n in shapes[tap]]
        feats[tap][0, 0, k[0], k[1]] = 1.0
        with torch.no_grad():
            for t in ("s32", "s16", "s8"):
                getattr(head, f"score_{t}").weight.zero_()
            getattr(head, f"score_{tap}").weight[0, 0] = 1.0
            out = head(feats, size)[0, 0].double()
        assert out.min() >= 0 and out.sum() > 0
        for axis in (0, 1):
            profile = out.sum(dim=1 - axis)
            centre = float((profile * pos[axis]).sum() / profile.sum())
            expect = taps[tap].stride * k[axis] + taps[tap].offset
            assert abs(centre - expect) < 1e-3, (tap, axis, centre, expect)


@pytest.mark.parametrize("name", list_backbones())
def test_output_pixel_j_is_centred_on_input_pixel_j(name: str) -> None:
    """End to end (backbone on the ring + the real FCN-8s head, every mode): the gradient of
    output pixel j w.r.t. the input is centred on input pixel j. Between two s32 features the
    ring's phase estimate of a two-copy mixture is off by up to 0.3 px (arc vs chord at
    32/256 of a turn), hence the tolerance; the old placement was 3.5-15.5 px off."""
    backbone = _geometric_copy(create_backbone(name), -1)
    x = torch.ones(1, 3, 32, _RING, requires_grad=True)
    feats = backbone(x)
    for mode in MODES:
        head = FCNHead(_meta_taps(name, (32, _RING))[0], ("s32", "s16", "s8"), 2, mode).eval()
        with torch.no_grad():
            for tap in ("s32", "s16", "s8"):
                score = getattr(head, f"score_{tap}")
                score.weight[0].fill_(1.0 / score.weight.shape[1])  # class 0: the taps' mean
        out = head(feats, x.shape[-2:])
        for j in (_RING // 2, _RING // 2 + 5, _RING // 2 + 12):  # on and between features
            (grad,) = torch.autograd.grad(out[0, 0, 16, j], x, retain_graph=True)
            offset = _wrapped(_circular_centre(grad[0], -1) - j, _RING)
            assert abs(offset) < 0.35, (mode, j, offset)


def test_old_layout_state_dicts_still_load() -> None:
    """Parameter names and shapes are those of the code before the alignment (commit 53f4bb5,
    recorded in tests/fixtures): its checkpoints load, strict, into today's models."""
    layout = json.loads((Path(__file__).parent / "fixtures" / "state_layout_53f4bb5.json").read_text())
    for name, keys in layout["models"].items():
        with torch.device("meta"):
            model = create_model(name, layout["num_classes"], upsample=layout["upsample"])
        assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == keys, name
    # and a real load of one of them, the upsampling weights included
    keys = dict(layout["models"]["fcn8s_resnet18"])
    torch.manual_seed(0)
    old = {k: torch.randn(shape) if shape else torch.tensor(1) for k, shape in keys.items()}
    model = create_model("fcn8s_resnet18", layout["num_classes"])
    model.load_state_dict(old, strict=True)
    torch.testing.assert_close(model.head.up_out.weight, old["head.up_out.weight"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("offset", [3.5, 0.0, 0.3, -1.0])
def test_upsample_samples_the_source_at_its_offset(mode: str, offset: float) -> None:
    """Target pixel j reads the source at (j - offset) / factor: a ramp over source features
    comes out as exactly that in the interior, for every mode and offset."""
    f, h, w = 8, 5, 7
    up = Upsample(1, f, mode, offset=offset)
    ramp = torch.arange(w, dtype=torch.float32).expand(1, 1, h, w)
    with torch.no_grad():
        out = up(ramp, (h * f, w * f))
    j = torch.arange(w * f, dtype=torch.float32)
    expect = ((j - offset) / f).expand_as(out)
    inner = slice(2 * f, (w - 2) * f)  # away from the zero-padded / clamped border
    torch.testing.assert_close(out[..., f:-f, inner], expect[..., f:-f, inner], atol=1e-5, rtol=0)
