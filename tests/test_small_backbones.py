"""resnet18 / resnet34 (basic blocks) in every network."""
import pytest
import torch
import torchvision

from net.affinity import AffinityNet, BoundaryNet
from net.backbone import build_backbone, stage_channels, stage_outputs
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


def test_a_checkpoints_backbone_loads_as_pretrained_weights(tmp_path):
    trained = SIPENet(5, "sipe", pretrained="none", backbone="resnet18")
    torch.save({"kind": "cam", "model": trained.state_dict()}, tmp_path / "cam.pth")
    model = build_backbone("resnet18", str(tmp_path / "cam.pth"))
    assert isinstance(model, torchvision.models.ResNet)
    assert torch.equal(model.layer2[1].conv1.weight, trained.backbone.layer2[1].conv1.weight)
    assert torch.equal(model.bn1.running_var, trained.backbone.bn1.running_var)
