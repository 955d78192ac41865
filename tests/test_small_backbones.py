"""resnet18 / resnet34 (basic blocks) in every network, the pretraining corpus and its
classifier (the toy run's stand-in for ImageNet, docs/toy.md)."""
import json

import numpy as np
import pytest
import torch
import torchvision

from data.corpus import CLASS_NAMES, EXTENT_RANGE, HUES, SHAPES, TEXTURES, corpus_shape_mask, generate_corpus
from data.sources import build_source
from data.toy import CLASS_NAMES as TOY_CLASSES
from data.toy import TEXTURES as TOY_TEXTURES
from net.affinity import AffinityNet, BoundaryNet
from net.backbone import build_backbone, stage_channels, stage_outputs
from net.classifier import ImageClassifier, classification_loss
from net.segmentation import build_segmentation_net
from net.sipe import SIPENet, multiscale_maps

SMALL = ("resnet18", "resnet34")


@pytest.mark.parametrize("backbone", SMALL)
def test_small_backbone_strides_and_widths(backbone):
    model = build_backbone(backbone, "none").eval()
    outputs = stage_outputs(model, torch.randn(1, 3, 65, 97))
    assert [x.shape[1] for x in outputs] == [64, *stage_channels(backbone)] == [64, 64, 128, 256, 512]
    assert [x.shape[-2:] for x in outputs] == [(17, 25), (17, 25), (9, 13), (5, 7), (5, 7)]  # OS 16
    assert model.layer4[0].conv1.stride == (1, 1) and model.layer4[0].downsample[0].stride == (1, 1)


@pytest.mark.parametrize("backbone", SMALL)
def test_small_backbone_at_output_stride_8_dilates_as_torchvision_does_bottlenecks(backbone):
    model = build_backbone(backbone, "none", output_stride=8).eval()
    outputs = stage_outputs(model, torch.randn(1, 3, 64, 96))
    assert [x.shape[-2:] for x in outputs[2:]] == [(8, 12)] * 3
    for layer, rate, previous in ((model.layer3, 2, 1), (model.layer4, 4, 2)):
        assert layer[0].conv1.dilation == (previous, previous) and layer[0].conv1.stride == (1, 1)
        assert all(conv.dilation == (rate, rate) and conv.padding == (rate, rate)
                   for block in layer for conv in (block.conv1, block.conv2) if conv is not layer[0].conv1)
    # the dilated network computes the strided one's layer3 response at every other pixel
    strided = build_backbone(backbone, "none", output_stride=16).eval()
    strided.load_state_dict(model.state_dict())
    image = torch.randn(1, 3, 64, 96)
    dilated_x3 = stage_outputs(model, image)[3]
    first = strided.layer3[0]
    with torch.no_grad():
        x2 = stage_outputs(strided, image)[2]
        expected = first(x2)
        # float32 rounding grows with the random network's outputs (up to about 40 here)
        tolerance = 1e-5 * float(expected.abs().max())
        assert torch.allclose(expected, model.layer3[0](x2)[..., ::2, ::2], atol=tolerance)
    assert dilated_x3.shape[-2:] == (8, 12)


def test_every_network_builds_and_runs_on_resnet18():
    images = torch.randn(2, 3, 64, 64)
    sipe = SIPENet(5, "ae_sipe", pretrained="none", backbone="resnet18")
    out = sipe(images, torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 1.0, 0]]), torch.ones(2, 64, 64))
    assert torch.isfinite(out["cls_loss"]) and torch.isfinite(out["gsc_loss"]) and out["score"].shape == (2, 4)
    sipe.eval()
    maps = {name: value.fused() for name, value in
            multiscale_maps(sipe, [images[:1], images[:1, :, ::2, ::2]], torch.tensor([0, 2]), (64, 64)).items()}
    assert maps["plain_cam"].shape == maps["is_cam"].shape == maps["ae_is_cam"].shape == (2, 64, 64)
    assert AffinityNet("none", "resnet18")(images).shape == (2, 448, 8, 8)
    assert BoundaryNet("none", "resnet18").logits(images).shape == (2, 1, 16, 16)
    for arch in ("deeplabv2", "deeplabv3"):
        seg = build_segmentation_net(arch, 5, "resnet18", "none").eval()
        assert seg(images).shape == (2, 5, 64, 64)


def test_the_classifier_backbone_loads_as_pretrained_weights(tmp_path):
    classifier = ImageClassifier(32, "resnet18")
    assert isinstance(classifier.backbone, torchvision.models.ResNet)
    torch.save({"kind": "pretrain", "model": classifier.state_dict()}, tmp_path / "pretrain.pth")
    model = build_backbone("resnet18", str(tmp_path / "pretrain.pth"))
    assert torch.equal(model.layer2[1].conv1.weight, classifier.backbone.layer2[1].conv1.weight)
    assert torch.equal(model.bn1.running_var, classifier.backbone.bn1.running_var)
    batch = {"image": torch.randn(3, 3, 48, 48), "label": torch.eye(32)[[0, 5, 31]]}
    loss = classification_loss(classifier, batch)["ce"]
    logits = classifier(batch["image"])
    expected = -torch.log_softmax(logits, 1)[torch.arange(3), torch.tensor([0, 5, 31])].mean()
    assert torch.allclose(loss, expected)


def test_corpus_shares_no_class_shape_or_texture_with_the_toy_and_its_hues_cover_the_circle(tmp_path):
    assert len(CLASS_NAMES) - 1 == 96 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert not set(SHAPES) & set(TOY_CLASSES)
    assert not set(TEXTURES) & set(TOY_TEXTURES.values()) and len(set(TEXTURES)) == 8
    # every hue, the toy's among them, lies in a family (family_colour draws +-15 degrees around it)
    centres = np.array(list(HUES.values()))
    gaps = [np.abs((hue - centres + 180) % 360 - 180).min() for hue in np.arange(0, 360, 0.5)]
    assert max(gaps) <= 15 and len(centres) == len(set(centres)) == 12
    root = generate_corpus(tmp_path / "corpus", num_images=12, size=(40, 56), seed=3)
    source = build_source("custom", root)
    ids = source.ids("train")
    assert len(ids) == 12 and source.num_classes == 97
    assert all(len(source.labels(i)) == 1 for i in ids)  # one class per image
    again = generate_corpus(tmp_path / "again", num_images=12, size=(40, 56), seed=3)
    assert (root / "JPEGImages" / f"{ids[4]}.jpg").read_bytes() == (again / "JPEGImages" / f"{ids[4]}.jpg").read_bytes()


def test_corpus_cli_keeps_the_same_corpus_and_refuses_another(tmp_path, capsys):
    from data import corpus
    out = tmp_path / "corpus"
    argv = ["--out", str(out), "--num-images", "3", "--image-size", "40"]
    corpus.main(argv)
    assert json.loads((out / "corpus.json").read_text()) == {"num_images": 3, "size": [30, 40], "seed": 0,
                                                                "generator": corpus.GENERATOR}
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    corpus.main(argv)
    assert capsys.readouterr().out.strip().endswith("(already there)")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    for other in (["--num-images", "4"], ["--seed", "1"], ["--image-size", "48"]):
        with pytest.raises(SystemExit) as exit_info:
            corpus.main(argv + other)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.startswith(f"error: {out}: holds a corpus of other settings")
    # a corpus of the generator before (classes of shape and hue) is not this one
    (out / "corpus.json").write_text(json.dumps({"num_images": 3, "size": [30, 40], "seed": 0}))
    with pytest.raises(SystemExit):
        corpus.main(argv)
    assert capsys.readouterr().err.startswith(f"error: {out}: holds a corpus of other settings")
    for bad in (["--num-images", "0"], ["--image-size", "15"], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            corpus.main(["--out", str(tmp_path / "bad")] + bad)
        assert exit_info.value.code == 2 and bad[0] in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("shape", SHAPES)
def test_corpus_shapes_fill_a_plausible_part_of_their_box(shape):
    grid = np.mgrid[-60:61, -60:61].astype(np.float32)  # a box wider than the extent
    mask = corpus_shape_mask(shape, grid[1], grid[0], 100.0)
    fraction = mask.mean()
    assert 0.05 < fraction < 0.6, fraction  # a shape, neither a dot nor the whole box
    assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
    assert EXTENT_RANGE[0] < EXTENT_RANGE[1] <= 1


def test_pretrain_refuses_images_of_several_classes(make_toy, tmp_path):
    import pretrain
    from tools.io import PipelineError
    toy = make_toy(8, 2, (40, 48), 5)  # toy images hold one or two classes
    source = build_source("custom", toy)
    several = [i for i in source.ids("train") if len(source.labels(i)) > 1]
    assert several
    with pytest.raises(PipelineError, match=rf"{several[0]}\.jpg: 2 classes; pretrain.py trains a softmax"):
        pretrain.check_single_labels(source, "train")
    corpus = generate_corpus(tmp_path / "corpus", num_images=6, size=(40, 48), seed=1)
    pretrain.check_single_labels(build_source("custom", corpus), "train")
