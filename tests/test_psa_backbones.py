"""PSA's ResNet-38 and VGG-16 (docs/psa.md): the networks against a direct computation from
state dicts in PSA's key names, PSA's inference of CAMs and affinities, its freezing and
parameter groups, the released files read by the stages, the MXNet ImageNet file's format,
and the one-line errors.  ResNet-38 (105 M parameters) is built once per module and runs
on images of 32-64 px."""
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import train_affinity
import train_cam
from data.sources import build_source
from data.transforms import rescale, scaled_images
from engine.checkpoint import load_checkpoint, load_weights
from engine.train import build_optimizer
from net.affinity import AffinityNet, affinity_net_of, embedding_affinity, walk_affinitynet
from net.cam import CAMNet, psa_cam
from net.psa_backbones import build_psa_backbone, load_backbone_weights, read_backbone_weights, released_checkpoint
from net.resnet38 import ResNet38, mxnet_name, read_mxnet_params
from net.sipe import build_classifier, classifier_losses, classifier_of
from tests.scripts import assert_error, run
from tools.cam_files import load_cam
from tools.io import PipelineError, read_image
from tools.normalization import normalize
from tools.random_walk import random_walk

SCALES = (1.0, 0.5, 1.5, 2.0)
PSA_HEADS = {"classifier": "fc8", "side.0": "f8_3", "side.1": "f8_4", "side.2": "f8_5", "side_norm.0": "gn8_3",
             "side_norm.1": "gn8_4", "side_norm.2": "gn8_5", "fuse": "f9"}


def psa_state(model, seed):
    """The weights of ``model`` in PSA's key names (as its released files hold them), with
    random BatchNorm statistics and affine parameters, biases and GroupNorm parameters."""
    torch.manual_seed(seed)
    state = {}
    for name, value in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue  # PyTorch 0.4.0, which PSA used, wrote none
        value = value.clone()
        if name.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif value.dim() == 1:
            value.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
        head, _, rest = name.rpartition(".")
        layer = head.removeprefix("backbone.")
        for ours, theirs in PSA_HEADS.items():
            if head == ours:
                layer = theirs
        state[f"{layer}.{rest}"] = value
    if "fc8.weight" in state:  # positive: a random classifier may leave a class's relu'd CAM 0 everywhere
        state["fc8.weight"] = state["fc8.weight"].abs()
    return state


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """{(backbone, kind): (the network with PSA's released file loaded, that state dict in PSA's names)}."""
    folder = tmp_path_factory.mktemp("psa")
    built = {}
    for seed, (backbone, kind) in enumerate([("resnet38", "cam"), ("vgg16", "cam"), ("resnet38", "affinity"),
                                             ("vgg16", "affinity")]):
        torch.manual_seed(seed)
        model = (CAMNet(21, "none", backbone, frozen=True) if kind == "cam"
                 else AffinityNet("none", backbone, frozen=True))
        state = psa_state(model, seed)
        path = folder / f"{backbone}_{kind}.pth"
        torch.save(state, path)
        expect = {"kind": kind, **({"num_classes": 21} if kind == "cam" else {})}
        checkpoint = load_checkpoint(path, expect, foreign=released_checkpoint)  # as make_cam / make_seg_labels
        assert checkpoint["backbone"] == backbone
        loaded = classifier_of(checkpoint, 21) if kind == "cam" else affinity_net_of(checkpoint)
        load_weights(loaded, checkpoint["model"], path)
        built[backbone, kind] = (loaded.eval(), state, path)
        del model
    return built


# ---- a direct computation of PSA's networks from their state dicts --------------------------------------

def bn(state, name, x):
    return F.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                        state[f"{name}.bias"], False, 0.0, 1e-5)


def resnet38_levels(state, x):
    """PSA's ResNet-38: (b5's activated input, b6's, relu(bn7))."""
    def block(name, x, stride=1, dilation=1, first=None):
        first = dilation if first is None else first
        a = F.relu(bn(state, f"{name}.bn_branch2a", x))
        shortcut = F.conv2d(a, state[f"{name}.conv_branch1.weight"], stride=stride) \
            if f"{name}.conv_branch1.weight" in state else x
        if f"{name}.bn_branch2b2.weight" in state:  # bottleneck: 1x1, 3x3 dilated, 1x1
            y = F.conv2d(a, state[f"{name}.conv_branch2a.weight"])
            y = F.conv2d(F.relu(bn(state, f"{name}.bn_branch2b1", y)), state[f"{name}.conv_branch2b1.weight"],
                         padding=dilation, dilation=dilation)
            y = F.conv2d(F.relu(bn(state, f"{name}.bn_branch2b2", y)), state[f"{name}.conv_branch2b2.weight"])
        else:
            y = F.conv2d(a, state[f"{name}.conv_branch2a.weight"], stride=stride, padding=first, dilation=first)
            y = F.conv2d(F.relu(bn(state, f"{name}.bn_branch2b1", y)), state[f"{name}.conv_branch2b1.weight"],
                         padding=dilation, dilation=dilation)
        return shortcut + y, a

    x = F.conv2d(x, state["conv1a.weight"], padding=1)
    for stage, count in ((2, 3), (3, 3), (4, 6)):
        for index in range(count):
            x = block(f"b{stage}" if index == 0 else f"b{stage}_{index}", x, stride=2 if index == 0 else 1)[0]
    x, conv4 = block("b5", x, dilation=2, first=1)
    x = block("b5_2", block("b5_1", x, dilation=2)[0], dilation=2)[0]
    x, conv5 = block("b6", x, dilation=4)
    x = block("b7", x, dilation=4)[0]
    return conv4, conv5, F.relu(bn(state, "bn7", x))


def vgg16_levels(state, x, fc6_dilation):
    """PSA's VGG-16 on Caffe's input: (relu(conv4_3), relu(conv5_3), relu(fc7))."""
    def conv(name, x, dilation=1):
        return F.relu(F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"], padding=dilation,
                               dilation=dilation))
    for names, stride in ((("conv1_1", "conv1_2"), 2), (("conv2_1", "conv2_2"), 2),
                          (("conv3_1", "conv3_2", "conv3_3"), 2)):
        for name in names:
            x = conv(name, x)
        x = F.max_pool2d(x, 3, stride, padding=1)
    conv4 = conv("conv4_3", conv("conv4_2", conv("conv4_1", x)))
    x = F.max_pool2d(conv4, 3, 1, padding=1)
    conv5 = conv("conv5_3", conv("conv5_2", conv("conv5_1", x, 2), 2), 2)
    fc7 = F.relu(F.conv2d(conv("fc6", conv5, fc6_dilation), state["fc7.weight"], state["fc7.bias"]))  # 1x1
    return conv4, conv5, fc7


def caffe_input(image):
    """PSA's VGG-16 normalisation of a uint8 RGB image: BGR minus the mean pixel, no std."""
    bgr = image[..., ::-1].astype(np.float32) - np.array([104.008, 116.669, 122.675], np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]


def psa_input(backbone, image):
    return normalize(image)[None] if backbone == "resnet38" else caffe_input(image)


def psa_levels(backbone, state, x, kind):
    if backbone == "resnet38":
        return resnet38_levels(state, x)
    return vgg16_levels(state, x, 4 if kind == "affinity" else 1)


def psa_forward_cam(backbone, state, x):
    """PSA's ``forward_cam``: relu(fc8) of the last level; its square root on VGG-16."""
    cam = F.relu(F.conv2d(psa_levels(backbone, state, x, "cam")[-1], state["fc8.weight"]))
    return cam.sqrt() if backbone == "vgg16" else cam


def psa_infer_cls(backbone, state, image, label):
    """PSA's infer_cls.py for one image: at each scale (PIL's bicubic of the uint8 image) and
    its flip, the CAM bilinearly resized to the image, times the labels, flip undone, summed;
    each channel divided by its max + 1e-5."""
    total = 0
    for scale in SCALES:
        x = psa_input(backbone, image if scale == 1.0 else rescale(image, scale))
        for flip in (False, True):
            cam = psa_forward_cam(backbone, state, x.flip(-1) if flip else x)
            cam = F.interpolate(cam, image.shape[:2], mode="bilinear", align_corners=False)[0] * label[:, None, None]
            total = total + (cam.flip(-1) if flip else cam)
    return total / (total.amax(dim=(1, 2), keepdim=True) + 1e-5)


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


def smooth_image(height, width, seed):
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.uniform(0, 255, (1, 3, height // 4 + 2, width // 4 + 2)).astype(np.float32))
    return F.interpolate(small, (height, width), mode="bilinear").round().clamp(0, 255)[0].permute(1, 2, 0) \
        .numpy().astype(np.uint8)


# ---- PSA's inference ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["resnet38", "vgg16"])
def test_cams_of_psas_released_classifier_equal_psas_inference(networks, backbone):
    model, state, _ = networks[backbone, "cam"]
    image = smooth_image(40, 32, seed=1)
    keys = torch.tensor([0, 3, 15])
    label = torch.zeros(20)
    label[keys[1:] - 1] = 1
    with torch.no_grad():
        expected = psa_infer_cls(backbone, state, image, label)[keys[1:] - 1]
        maps = psa_cam(model, scaled_images(image, SCALES), keys, image.shape[:2]).fused()
    assert maps.shape == (3, 40, 32)
    assert relative(maps[1:], expected) < 1e-3
    assert torch.allclose(maps[0], 1 - maps[1:].amax(dim=0))


def psa_pairs(radius, height, width):
    """PSA's pair indices (its get_indices_of_pairs), written out."""
    offsets = [(0, x) for x in range(1, radius)] + [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius)
                                                    if x * x + y * y < radius * radius]
    grid = np.arange(height * width).reshape(height, width)
    r = radius - 1
    index_from = grid[:-r, r:-r].reshape(-1)
    index_to = np.concatenate([grid[dy:dy + height - r, r + dx:r + dx + width - 2 * r].reshape(-1)
                               for dy, dx in offsets])
    return torch.from_numpy(index_from), torch.from_numpy(index_to)


@pytest.mark.parametrize("backbone", ["resnet38", "vgg16"])
def test_affinities_of_psas_released_affinitynet_equal_psas_inference(networks, backbone):
    model, state, _ = networks[backbone, "affinity"]
    image = smooth_image(61, 75, seed=2)  # not multiples of 8: PSA pads the normalised input to 64 x 80
    x = F.pad(psa_input(backbone, image), (0, 5, 0, 3))
    with torch.no_grad():
        levels = psa_levels(backbone, state, x, "affinity")
        parts = []
        for index, level in enumerate(levels):
            y = F.conv2d(level, state[f"f8_{index + 3}.weight"])
            if backbone == "vgg16":
                norm = f"gn8_{index + 3}"
                y = F.group_norm(y, (8, 16, 32)[index], state[f"{norm}.weight"], state[f"{norm}.bias"])
            parts.append(F.elu(y))
        features = F.elu(F.conv2d(torch.cat(parts, 1), state["f9.weight"])).flatten(2)
        index_from, index_to = psa_pairs(5, 8, 10)
        source = features[:, :, index_from].unsqueeze(2)
        target = features[:, :, index_to].view(1, 448, -1, index_from.numel())
        expected = torch.exp(-(target - source).abs().mean(dim=1))
        embeddings = model(normalize(image)[None])
        got = embedding_affinity(embeddings)
    assert embeddings.shape[-2:] == (8, 10) and got.shape == expected.shape
    assert relative(got, expected) < 1e-3


def test_psas_walk_pads_the_cam_to_the_padded_image_before_pooling():
    embeddings = torch.randn(1, 448, 3, 4)
    cam = torch.rand(3, 20, 27)  # 20 x 27 pads to 24 x 32
    cam[0] = 1 - cam[1:].amax(0)
    walked = walk_affinitynet(embeddings, cam, beta=8, t=4, alpha=4, padded=True)
    plain = walk_affinitynet(embeddings, F.pad(cam, (0, 5, 0, 4), value=0.0), beta=8, t=4, alpha=4)
    # PSA pads its full CAM array (background included) with zeros, then pools 8 x 8: the padded
    # background is 0, where (1 - max)**alpha of a padded zero foreground would be 1
    padded = torch.cat([(1 - cam[1:].amax(0, keepdim=True)) ** 4, cam[1:]])
    direct = F.avg_pool2d(F.pad(padded, (0, 5, 0, 4))[None], 8)[0]
    assert walked.shape == (3, 3, 4) and not torch.allclose(walked, plain)
    affinity = embedding_affinity(embeddings)[0]
    assert torch.allclose(walked, random_walk(direct.flatten(1), affinity, (3, 4), 5, 8, 4).view(3, 3, 4))


# ---- PSA's training: what is frozen, the four groups, the dropout ---------------------------------------

def group_names(model):
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in model.param_groups()]


def test_resnet38_classifier_trains_as_psa(networks):
    model = networks["resnet38", "cam"][0]
    weights, biases, new_weights, new_biases = group_names(model)
    # PSA trains the convolutions from b3 on and fc8; conv1a, b2..b2_2 and every BatchNorm are frozen
    assert new_weights == ["classifier.weight"] and biases == [] and new_biases == []
    assert all(n.startswith("backbone.b") and ".conv_" in n for n in weights)
    assert "backbone.b3.conv_branch2a.weight" in weights and "backbone.b7.conv_branch2b2.weight" in weights
    assert not any(n.startswith(("backbone.b2.", "backbone.b2_", "backbone.conv1a")) for n in weights)
    assert len(weights) == sum(1 for n, p in model.backbone.named_parameters() if ".conv_" in n
                               and not n.startswith(("b2.", "b2_")))
    assert model.dropout.p == 0.5 and model.backbone.b7.dropout_2b2.p == 0.5 and model.backbone.b6.dropout_2b1.p == 0.3
    bn7 = model.backbone.bn7.train()  # PSA keeps ResNet-38's BatchNorm on its statistics in training too
    x = torch.randn(2, 4096, 3, 3)
    with torch.no_grad():
        assert torch.allclose(bn7(x), F.batch_norm(x, bn7.running_mean, bn7.running_var, bn7.weight, bn7.bias, False))
    bn7.eval()


def test_vgg16_networks_train_as_psa(networks):
    classifier = networks["vgg16", "cam"][0]
    weights, biases, new_weights, new_biases = group_names(classifier)
    assert new_weights == ["classifier.weight"] and new_biases == []
    assert "backbone.conv3_1.weight" in weights and "backbone.fc7.bias" in biases
    assert not any(n.startswith(("backbone.conv1_", "backbone.conv2_")) for n in weights + biases)
    assert classifier.backbone.fc6.dilation == (1, 1)
    affinity = networks["vgg16", "affinity"][0]
    weights, biases, new_weights, new_biases = group_names(affinity)
    assert affinity.backbone.fc6.dilation == (4, 4)
    # PSA's GroupNorms are not among its from-scratch layers: they learn at the base rate
    assert "side_norm.0.weight" in weights and "side_norm.2.bias" in biases
    assert new_weights == ["side.0.weight", "side.1.weight", "side.2.weight", "fuse.weight"] and new_biases == []


def test_vgg16_classifier_steps_with_psas_learning_rates(networks):
    model = networks["vgg16", "cam"][0]
    args = train_cam.parse_args(["--method", "cam", "--backbone", "vgg16", "--data-root", "x", "--work-dir", "y"])
    optimizer = build_optimizer(model, args.lr, args.new_layer_lr_mult, args.weight_decay, args.momentum)
    # pretrained weights x1 with decay, pretrained biases x2 without, fc8 x10 with decay (it has no bias)
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        (0.1, 5e-4), (0.2, 0.0), (pytest.approx(1.0), 5e-4)]
    frozen, learned = model.backbone.conv1_1.weight.clone(), model.classifier.weight.clone()
    model.train()
    losses = classifier_losses(model, {"image": torch.randn(2, 3, 48, 48), "label": torch.eye(20)[:2],
                                       "valid": torch.ones(2, 48, 48)})
    losses["cls"].backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()
    assert torch.equal(model.backbone.conv1_1.weight, frozen) and not torch.equal(model.classifier.weight, learned)


def test_vgg16_input_is_caffes():
    image = smooth_image(16, 16, seed=3)
    assert torch.allclose(build_psa_backbone("vgg16", "none").prepare(normalize(image)[None]), caffe_input(image),
                          atol=1e-3)


# ---- released files and weights files: recognised, or one line ------------------------------------------

def test_released_files_are_recognised_by_their_keys(networks):
    for (backbone, kind), (_, state, path) in networks.items():
        checkpoint = released_checkpoint(torch.load(path), path)
        assert (checkpoint["kind"], checkpoint["backbone"]) == (kind, backbone)
    with pytest.raises(PipelineError, match="nor a state dict of PSA's"):
        released_checkpoint({"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}, "x.pth")


def test_a_released_file_that_does_not_fit_is_one_line(networks, tmp_path):
    _, state, _ = networks["vgg16", "cam"]
    wrong = dict(state, **{"fc7.weight": torch.zeros(1024, 512, 1, 1)})
    path = tmp_path / "vgg16_cls.pth"
    torch.save(wrong, path)
    checkpoint = load_checkpoint(path, {"kind": "cam"}, foreign=released_checkpoint)
    with pytest.raises(PipelineError, match=r"vgg16_cls.pth: .*1 of another shape, e\.g\. backbone\.fc7\.weight"):
        load_weights(classifier_of(checkpoint, 21), checkpoint["model"], path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(networks["vgg16", "cam"][2].read_bytes()[:5000])
    with pytest.raises(PipelineError, match="truncated.pth: cannot read checkpoint"):
        load_checkpoint(truncated, {"kind": "cam"}, foreign=released_checkpoint)


def test_vgg16_imagenet_weights_as_psas_converter_writes_them(networks, tmp_path):
    _, state, _ = networks["vgg16", "cam"]
    caffe = {k: v for k, v in state.items() if k != "fc8.weight"}
    caffe["fc8.weight"], caffe["fc8.bias"] = torch.zeros(21, 1024, 1, 1), torch.zeros(21)  # DeepLab's own head
    path = tmp_path / "vgg16_20M.pth"
    torch.save(caffe, path)
    backbone = build_psa_backbone("vgg16", str(path))
    assert torch.equal(backbone.conv5_2.weight, state["conv5_2.weight"])
    del caffe["conv4_1.bias"]
    torch.save(caffe, path)
    with pytest.raises(PipelineError, match=r"vgg16_20M.pth: not weights of PSA's VGG16 \(1 tensors missing.*conv4_1"):
        build_psa_backbone("vgg16", str(path))


def test_prototype_methods_and_irn_refuse_psas_backbones():
    with pytest.raises(PipelineError, match="--method sipe reads the four stage outputs"):
        build_classifier(21, "sipe", "none", "resnet38")
    with pytest.raises(SystemExit):
        train_cam.parse_args(["--method", "ae_sipe", "--backbone", "vgg16", "--data-root", "x", "--work-dir", "y"])
    with pytest.raises(SystemExit):
        train_affinity.parse_args(["--arch", "irn", "--backbone", "resnet38", "--data-root", "x", "--work-dir", "y"])
    args = train_cam.parse_args(["--method", "cam", "--backbone", "resnet38", "--data-root", "x", "--work-dir", "y"])
    assert (args.crop_size, args.batch_size, args.epochs, args.lr, args.weight_decay) == (448, 16, 15, 0.1, 5e-4)


# ---- MXNet's NDArray list ----------------------------------------------------------------------------------

def ndarray_bytes(array, version=2):
    """One NDArray as mx.nd.save writes it (V2: magic, dense storage, int64 shape; V1: magic,
    int64 shape; 0: the legacy uint32 shape), on the CPU context, float32."""
    shape = array.shape
    if version == 2:
        head = struct.pack("<Ii", 0xF993FAC9, 0) + struct.pack(f"<I{len(shape)}q", len(shape), *shape)
    elif version == 1:
        head = struct.pack("<I", 0xF993FAC8) + struct.pack(f"<I{len(shape)}q", len(shape), *shape)
    else:
        head = struct.pack(f"<I{len(shape)}I", len(shape), *shape)
    return head + struct.pack("<iii", 1, 0, 0) + array.astype("<f4").tobytes()


def params_file(path, arrays, versions=None):
    names = list(arrays)
    body = struct.pack("<QQQ", 0x112, 0, len(names))
    for index, name in enumerate(names):
        body += ndarray_bytes(arrays[name], (versions or {}).get(name, 2))
    body += struct.pack("<Q", len(names))
    for name in names:
        body += struct.pack("<Q", len(name)) + name.encode()
    path.write_bytes(body)
    return path


def test_mxnet_params_are_parsed_with_numpy(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"arg:conv1a_weight": rng.standard_normal((64, 3, 3, 3)).astype(np.float32),
              "aux:bn7_moving_var": rng.random(4096).astype(np.float32),
              "arg:res4b3_branch2b1_weight": rng.standard_normal((2, 3, 1, 1)).astype(np.float32)}
    path = params_file(tmp_path / "a1.params", arrays, {"aux:bn7_moving_var": 1, "arg:res4b3_branch2b1_weight": 0})
    read = read_mxnet_params(path)
    assert list(read) == list(arrays) and all(np.array_equal(read[k], v) for k, v in arrays.items())
    state = read_backbone_weights(path)  # recognised by its magic, renamed
    assert sorted(state) == ["b4_3.conv_branch2b1.weight", "bn7.running_var", "conv1a.weight"]
    with pytest.raises(PipelineError, match=r"a1.params: not weights of PSA's ResNet38 \(.* tensors missing"):
        load_backbone_weights(ResNet38(), state, path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(PipelineError, match="a1.params: not an MXNet .params file .*truncated"):
        read_mxnet_params(path)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(PipelineError, match="a1.params: not an MXNet .params file .*not MXNet's NDArray list magic"):
        read_mxnet_params(path)


def to_mxnet(name):
    """Model A1's MXNet name of a ResNet38 parameter, written out: b4_3.conv_branch2a.weight is
    res4b3_branch2a_weight, b5.bn_branch2b1.running_mean bn5a_branch2b1_moving_mean."""
    suffix = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}
    parts = name.split(".")
    if parts[0] == "conv1a":
        return "arg:conv1a_weight"
    if parts[0] == "bn7":
        return f"{'aux' if 'running' in parts[1] else 'arg'}:bn7_{suffix[parts[1]]}"
    stage, _, index = parts[0][1:].partition("_")
    layer, _, branch = parts[1].partition("_")
    prefix = "res" if layer == "conv" else "bn"
    param = parts[2] if layer == "conv" else suffix[parts[2]]
    block = f"b{index}" if index else "a"
    return f"{'aux' if 'running' in parts[2] else 'arg'}:{prefix}{stage}{block}_{branch}_{param}"


def test_every_resnet38_tensor_has_its_mxnet_name(networks):
    backbone = networks["resnet38", "cam"][0].backbone
    names = [n for n in backbone.state_dict() if not n.endswith("num_batches_tracked")]
    assert len({to_mxnet(n) for n in names}) == len(names) > 150
    assert all(mxnet_name(to_mxnet(n)) == n for n in names)
    assert mxnet_name("arg:linear1000_weight") is None


# ---- the stages on PSA's released files ------------------------------------------------------------------

@pytest.mark.slow
def test_make_cam_and_make_seg_labels_take_released_files(networks, make_toy, tmp_path):
    toy = make_toy(num_train=4, num_val=2, size=(40, 56), seed=3)
    data = ["--dataset", "custom", "--data-root", toy, "--split", "train"]
    num_classes = build_source("custom", toy).num_classes
    _, state, _ = networks["vgg16", "cam"]
    classifier = tmp_path / "vgg16_cls.pth"  # PSA's file, for the toy's classes
    torch.save(dict(state, **{"fc8.weight": state["fc8.weight"][:num_classes - 1]}), classifier)
    work = tmp_path / "run"
    infer = ["--work-dir", work, "--device", "cpu", "--num-workers", "0"]
    run("make_cam.py", *data, *infer, "--checkpoint", classifier)
    source = build_source("custom", toy)
    names = source.ids("train")
    for name in names:
        size = read_image(source.image_path(name)).shape[:2]
        keys, cam = load_cam(work / "cam" / f"{name}.npy", "cam", num_classes, size)
        assert np.array_equal(keys[1:], source.labels(name)) and np.allclose(cam[1:].max(axis=(1, 2)), 1, atol=1e-3)
    run("make_seg_labels.py", *data, *infer, "--checkpoint", networks["vgg16", "affinity"][2], "--steps", "4")
    assert sorted(p.stem for p in (work / "pseudo_labels").glob("*.png")) == sorted(names)

    torchvision_file = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), torchvision_file)
    assert_error(run("make_cam.py", *data, *infer, "--out-dir", tmp_path / "x", "--checkpoint", torchvision_file,
                     check=False), torchvision_file, "not a checkpoint of this pipeline, nor a state dict of PSA's")
    assert_error(run("make_cam.py", *data, *infer, "--out-dir", tmp_path / "y", "--checkpoint",
                     networks["vgg16", "cam"][2], check=False), networks["vgg16", "cam"][2],
                 f"checkpoint has num_classes=21, this run needs {num_classes}")
