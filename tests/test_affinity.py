"""Stage 5 building blocks (docs/method.md §9, §10, §12): pair affinities and losses against direct
computations, the two networks' shapes and freezing, the walks against their composition,
and the joint image/label augmentation of the affinity dataset."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.datasets import LabelMapDataset
from data.sources import build_source
from data.toy import generate
from data.transforms import TrainTransform, resize_long
from PIL import Image

import train_affinity
from net.affinity import (AffinityNet, BoundaryNet, affinity_losses, boundary_map, embedding_affinity,
                          walk_affinitynet, walk_irn)
from net.backbone import stage_outputs
from tools.io import PipelineError, read_image, write_label_png
from tools.normalization import IMAGENET_MEAN, IMAGENET_STD
from tools.random_walk import (directions, pairs_within_radius, path_max_affinity, path_offsets,
                               propagate_with_boundary, random_walk)


# ---- pair affinities and losses --------------------------------------------------------------------

def test_embedding_affinity_matches_per_pair_loop():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 9, 12, dtype=torch.float64, generator=generator)
    got = embedding_affinity(features)
    index_from, index_to = pairs_within_radius(5, (9, 12))
    assert got.shape == (2, 34, index_from.numel()) and got.dtype == torch.float64
    flat = features.flatten(2)
    for n in range(2):
        for d in range(index_to.shape[0]):
            for m, i in enumerate(index_from.tolist()):
                j = index_to[d, m].item()
                want = math.exp(-(flat[n, :, i] - flat[n, :, j]).abs().mean().item())
                assert got[n, d, m].item() == pytest.approx(want, rel=1e-12)
    # the same pairs at another radius, and AMP outputs come back in float32
    assert embedding_affinity(features, radius=3).shape == (2, len(directions(3)), 7 * 8)
    assert embedding_affinity(features.bfloat16()).dtype == torch.float32


def direct_losses(a, bg, fg, neg):
    """docs/method.md §9 written out sum by sum in float64."""
    a, bg, fg, neg = (x.double() for x in (a, bg, fg, neg))
    pos_terms = -torch.log(a + 1e-5)
    bg_loss = (pos_terms * bg).sum() / (bg.sum() + 1e-5)
    fg_loss = (pos_terms * fg).sum() / (fg.sum() + 1e-5)
    neg_loss = (-torch.log(1 + 1e-5 - a) * neg).sum() / (neg.sum() + 1e-5)
    return bg_loss, fg_loss, neg_loss


def random_pair_labels(shape, generator):
    """Disjoint 0/1 masks (bg positive, fg positive, negative) with some pairs in none of them."""
    kind = torch.randint(0, 4, shape, generator=generator)
    return tuple((kind == k).double() for k in range(3))


def test_affinity_losses_match_spec_formulas():
    generator = torch.Generator().manual_seed(1)
    shape = (3, 34, 40)
    affinity = torch.rand(shape, dtype=torch.float64, generator=generator)
    affinity[0, 0, :4] = torch.tensor([0.0, 1.0, 0.0, 1.0])  # both ends of [0, 1] stay finite
    bg, fg, neg = random_pair_labels(shape, generator)
    got = affinity_losses(affinity, bg, fg, neg)
    bg_loss, fg_loss, neg_loss = direct_losses(affinity, bg, fg, neg)
    assert set(got) == {"bg", "fg", "neg"}
    assert got["bg"].dtype == torch.float64
    torch.testing.assert_close(got["bg"].double(), bg_loss / 4)
    torch.testing.assert_close(got["fg"].double(), fg_loss / 4)
    torch.testing.assert_close(got["neg"].double(), neg_loss / 2)
    total = sum(got.values())
    torch.testing.assert_close(total.double(), bg_loss / 4 + fg_loss / 4 + neg_loss / 2)
    # IRN's ((bg + fg) / 2 + neg) / 2 is the same number
    torch.testing.assert_close(total.double(), ((bg_loss + fg_loss) / 2 + neg_loss) / 2)


@pytest.mark.parametrize("absent", ["bg", "fg", "neg", "all"])
def test_affinity_losses_are_zero_count_safe(absent):
    generator = torch.Generator().manual_seed(2)
    shape = (2, 34, 30)
    affinity = torch.rand(shape, dtype=torch.float64, generator=generator)  # float64: 1 + 1e-5 - a is exact enough
    affinity[..., :3] = torch.tensor([0.0, 1.0, 0.5])
    affinity.requires_grad_(True)
    masks = dict(zip(("bg", "fg", "neg"), random_pair_labels(shape, generator)))
    for kind in masks:
        if absent in (kind, "all"):
            masks[kind] = torch.zeros(shape)
    got = affinity_losses(affinity, masks["bg"], masks["fg"], masks["neg"])
    want = dict(zip(("bg", "fg", "neg"), direct_losses(affinity.detach(), masks["bg"], masks["fg"],
                                                         masks["neg"])))
    for kind, weight in (("bg", 4), ("fg", 4), ("neg", 2)):
        assert torch.isfinite(got[kind])
        if absent in (kind, "all"):
            assert got[kind].item() == 0
        else:
            assert got[kind].item() > 0
            torch.testing.assert_close(got[kind].double(), want[kind] / weight)
    sum(got.values()).backward()
    assert torch.isfinite(affinity.grad).all()


# ---- the networks ----------------------------------------------------------------------------------

def test_affinitynet_embeddings_stride_8_and_448_channels():
    torch.manual_seed(0)
    model = AffinityNet(pretrained="none").train()
    out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 448, 8, 12) and torch.isfinite(out).all()
    assert out.min() >= -1  # ELU output
    out2 = model.eval()(torch.randn(1, 3, 72, 88))
    assert out2.shape == (1, 448, 9, 11)


def test_affinitynet_affinity_of_is_embedding_affinity():
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(2, 448, 8, 12, generator=generator)
    torch.testing.assert_close(AffinityNet.affinity_of(embeddings), embedding_affinity(embeddings))
    torch.testing.assert_close(AffinityNet.affinity_of(embeddings, radius=3), embedding_affinity(embeddings, 3))


def test_boundarynet_stride_4_range_and_frozen_backbone():
    torch.manual_seed(0)
    model = BoundaryNet(pretrained="none")
    model.train()
    assert model.training and all(branch.training for branch in model.branches) and model.head.training
    batchnorms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and not any(bn.training for bn in batchnorms)
    buffers = {k: v.clone() for k, v in model.backbone.state_dict().items()}

    boundary = model(torch.randn(2, 3, 64, 96))
    assert boundary.shape == (2, 1, 16, 24)
    assert boundary.min() >= 0 and boundary.max() <= 1
    # BatchNorm statistics are not updated by a training-mode forward
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, buffers[key]), key

    model.affinity_of(boundary).mean().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    trained = [*model.branches.parameters(), *model.head.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    backbone_group, new_group = (group["params"] for group in model.param_groups())
    assert backbone_group == [] and {id(p) for p in new_group} == {id(p) for p in trained}


def test_boundarynet_affinity_of_is_one_minus_path_max():
    generator = torch.Generator().manual_seed(4)
    h, w = 9, 12
    boundary = torch.rand(2, 1, h, w, dtype=torch.float64, generator=generator)
    got = BoundaryNet.affinity_of(boundary)
    index_from, index_to = pairs_within_radius(5, (h, w))
    assert got.shape == (2, 34, index_from.numel())
    torch.testing.assert_close(got, path_max_affinity(boundary[:, 0]))
    for n in range(2):
        for d, offset in enumerate(directions(5)):
            for m, source in enumerate(index_from.tolist()):
                y, x = divmod(source, w)
                path = path_offsets(*offset)
                assert (0, 0) in path and offset in path
                peak = max(boundary[n, 0, y + py, x + px].item() for py, px in path)
                assert got[n, d, m].item() == pytest.approx(1 - peak, abs=1e-12)
    assert BoundaryNet.affinity_of(boundary.float().bfloat16()).dtype == torch.float32


# ---- the walks -------------------------------------------------------------------------------------

def test_walk_affinitynet_uses_one_minus_max_foreground_background():
    generator = torch.Generator().manual_seed(5)
    h, w, big_h, big_w = 10, 13, 37, 50  # not multiples: adaptive pooling
    embeddings = torch.randn(1, 16, h, w, dtype=torch.float64, generator=generator) * 0.3
    cam = torch.rand(3, big_h, big_w, dtype=torch.float64, generator=generator)
    alpha, beta, t = 4, 3, 7
    got = walk_affinitynet(embeddings, cam, beta=beta, t=t, alpha=alpha)
    assert got.shape == (3, h, w)

    stacked = torch.cat([(1 - cam[1:].amax(dim=0, keepdim=True)) ** alpha, cam[1:]])
    pooled = F.adaptive_avg_pool2d(stacked[None], (h, w))[0]
    affinity = embedding_affinity(embeddings)[0]
    want = random_walk(pooled.flatten(1), affinity, (h, w), 5, beta, t).view(3, h, w)
    torch.testing.assert_close(got, want)
    # the CAM's own background channel plays no part
    other = cam.clone()
    other[0] = torch.rand(big_h, big_w, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(walk_affinitynet(embeddings, other, beta=beta, t=t, alpha=alpha), got)
    # the defaults are docs/method.md §10's: beta 8, t 256, alpha 16
    stacked16 = torch.cat([(1 - cam[1:].amax(dim=0, keepdim=True)) ** 16, cam[1:]])
    pooled16 = F.adaptive_avg_pool2d(stacked16[None], (h, w))[0]
    torch.testing.assert_close(walk_affinitynet(embeddings, cam),
                               random_walk(pooled16.flatten(1), affinity, (h, w), 5, 8, 256).view(3, h, w))


def test_walk_irn_resizes_walks_upsamples_and_crops():
    generator = torch.Generator().manual_seed(6)
    h, w, big_h, big_w = 11, 14, 43, 55  # ceil(43 / 4) = 11, ceil(55 / 4) = 14: not multiples of 4
    boundary = torch.rand(1, 1, h, w, dtype=torch.float64, generator=generator) * 0.7
    cam = torch.rand(3, big_h, big_w, dtype=torch.float64, generator=generator)
    power, beta, t = 2.0, 4, 9
    got = walk_irn(boundary, cam, beta=beta, t=t, power=power)
    assert got.shape == (3, big_h, big_w)  # at the image size (docs/method.md §12)

    def direct(power, beta, t):
        """docs/method.md §10: CAM bilinearly resized to B's size, ** power, * (1 - B), walked at radius 5,
        upsampled x4 (bilinear) and cropped."""
        small = F.interpolate(cam[None], (h, w), mode="bilinear", align_corners=False)[0]
        b = boundary[0, 0]
        walked = propagate_with_boundary(small ** power * (1 - b), b, 5, beta, t)
        return F.interpolate(walked[None], (4 * h, 4 * w), mode="bilinear", align_corners=False)[0, :, :big_h, :big_w]

    torch.testing.assert_close(got, direct(power, beta, t))
    torch.testing.assert_close(walk_irn(boundary[0, 0], cam, beta=beta, t=t, power=power), got)  # [h, w] too
    # the defaults are docs/method.md §10's: radius 5, power 1.5, beta 10, t 256; the CAM's background is kept
    torch.testing.assert_close(walk_irn(boundary, cam), direct(1.5, 10, 256))
    other = cam.clone()
    other[0] *= 0.5
    assert not torch.allclose(walk_irn(boundary, other, beta=beta, t=t, power=power)[0], got[0])


# ---- IRN inference and training as published -------------------------------------------------------

def test_boundary_branches_upsample_before_relu_and_crop():
    torch.manual_seed(0)
    model = BoundaryNet(pretrained="none").eval()
    with torch.no_grad():
        for branch in model.branches:
            branch[1].bias.normal_()  # GroupNorm bias: negative values show where the ReLU comes
        images = torch.randn(1, 3, 70, 90)  # stem 18 x 23; layer2 9 x 12 -> 18 x 24; layer3 5 x 6 -> 20 x 24
        features = stage_outputs(model.backbone, images)
        size = features[0].shape[-2:]
        parts = []
        for branch, x, factor in zip(model.branches, features, (1, 1, 2, 4, 4)):
            conv, norm = branch[0], branch[1]
            y = norm(conv(x))
            if factor > 1:
                y = F.interpolate(y, scale_factor=factor, mode="bilinear", align_corners=False)
            parts.append(F.relu(y)[..., :size[0], :size[1]])
        want = model.head(torch.cat(parts, dim=1))
        torch.testing.assert_close(model.logits(images), want)
        torch.testing.assert_close(model(images), torch.sigmoid(want))


@pytest.mark.parametrize("size", [(50, 38), (45, 39)])
def test_boundary_map_pads_and_averages_image_and_flip_logits(size):
    torch.manual_seed(1)
    model = BoundaryNet(pretrained="none").eval()
    image = torch.randn(1, 3, *size)
    crop = 64
    with torch.no_grad():
        got = boundary_map(model, image, crop_size=crop)
        h, w = -(-size[0] // 4), -(-size[1] // 4)
        plain = model.logits(F.pad(image, (0, crop - size[1], 0, crop - size[0])))[0, 0, :h, :w]
        flipped = model.logits(F.pad(image.flip(-1), (0, crop - size[1], 0, crop - size[0])))[0, 0, :h, :w]
        want = torch.sigmoid((plain + flipped.flip(-1)) / 2)
    assert got.shape == (h, w)
    torch.testing.assert_close(got, want)
    # an image larger than the crop is padded to the next multiple of 16
    pad = (0, -(-size[1] // 16) * 16 - size[1], 0, -(-size[0] // 16) * 16 - size[0])
    with torch.no_grad():
        big = boundary_map(model, image, crop_size=32)
        padded = model.logits(F.pad(image, pad))[0, 0, :h, :w]
        padded_flip = model.logits(F.pad(image.flip(-1), pad))[0, 0, :h, :w]
    torch.testing.assert_close(big, torch.sigmoid((padded + padded_flip.flip(-1)) / 2))


@pytest.mark.parametrize("radius", [5, 10])
def test_pairs_match_a_brute_force_enumeration(radius):
    h, w = 23, 27
    got_from, got_to = pairs_within_radius(radius, (h, w))
    offsets = [(dy, dx) for dy in range(radius) for dx in range(-radius + 1, radius)
               if dx * dx + dy * dy < radius * radius and (dy > 0 or dx > 0)]
    offsets.sort(key=lambda o: (o[0] > 0, o[0], o[1]))  # (0, 1..r-1), then row by row (docs/method.md §9)
    sources = [(y, x) for y in range(h) for x in range(w)
               if all(0 <= y + dy < h and 0 <= x + dx < w for dy, dx in offsets)]
    assert got_from.tolist() == [y * w + x for y, x in sources]
    assert got_to.tolist() == [[(y + dy) * w + x + dx for y, x in sources] for dy, dx in offsets]
    if radius == 5:
        assert len(offsets) == 34


def test_train_affinity_defaults_per_architecture(tmp_path):
    irn = train_affinity.parse_args(["--arch", "irn", "--data-root", str(tmp_path), "--work-dir", str(tmp_path)])
    assert irn.radius == 10 and irn.scale_range == (0.5, 1.5) and irn.crop_size == 512 and irn.batch_size == 32
    psa = train_affinity.parse_args(["--arch", "affinitynet", "--data-root", str(tmp_path), "--work-dir",
                                     str(tmp_path)])
    assert psa.radius == 5 and psa.scale_range is None and psa.crop_size == 448
    mine = train_affinity.parse_args(["--arch", "irn", "--radius", "7", "--data-root", str(tmp_path),
                                      "--work-dir", str(tmp_path)])
    assert mine.radius == 7


@pytest.mark.parametrize("size", [(512, 512), (96, 128), (64, 40)])
def test_irn_labels_reach_stride_4_as_pils_nearest(size):
    labels = np.random.default_rng(0).integers(0, 21, size).astype(np.uint8)
    quarter = (size[0] // 4, size[1] // 4)
    pil = np.asarray(Image.fromarray(labels).resize(quarter[::-1], Image.NEAREST))
    ours = F.interpolate(torch.from_numpy(labels)[None, None].float(), quarter,
                         mode=train_affinity.LABEL_RESIZE["irn"])[0, 0]
    assert np.array_equal(ours.numpy().astype(np.uint8), pil)


# ---- joint augmentation ----------------------------------------------------------------------------

RED_OF_LABEL = {0: 20, 5: 125, 9: 230}


def coloured_scene(h=40, w=56, seed=0):
    """A random 8x8-block label map (classes 0, 5, 9) and an image whose red channel encodes it.

    Green and blue are constant and differ from the ImageNet mean, so no image pixel
    normalises to the all-zero padding colour."""
    rng = np.random.default_rng(seed)
    blocks = rng.choice(list(RED_OF_LABEL), (h // 8 + 1, w // 8 + 1))
    labels = np.kron(blocks, np.ones((8, 8), dtype=np.int64))[:h, :w].astype(np.uint8)
    image = np.zeros((h, w, 3), dtype=np.uint8)
    for label, red in RED_OF_LABEL.items():
        image[..., 0][labels == label] = red
    image[..., 1] = 30
    image[..., 2] = 200
    return image, labels


def label_of_colour(image):
    """The colour rule backwards: the label whose red value is nearest."""
    labels = torch.tensor(list(RED_OF_LABEL))
    reds = torch.tensor(list(RED_OF_LABEL.values()), dtype=torch.float32)
    return labels[(unnormalise(image)[0][..., None] - reds).abs().argmin(dim=-1)]


def unnormalise(image):
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image * std + mean) * 255


@pytest.mark.parametrize("long_range", [(56, 56), (30, 90)])
def test_with_labels_keeps_image_and_labels_aligned(long_range):
    image, label_map = coloured_scene()
    crop = 48
    transform = TrainTransform(long_range, crop)
    seen_flips, seen_padding, seen_crops = set(), set(), set()
    for seed in range(12):
        out_image, labels = transform.with_labels(image, label_map, np.random.default_rng(seed))
        assert out_image.shape == (3, crop, crop) and labels.shape == (crop, crop) and labels.dtype == torch.int64
        # the image side is exactly the plain transform with the same draws
        plain_image, valid = transform(image, np.random.default_rng(seed))
        assert torch.equal(out_image, plain_image)
        assert torch.equal(labels != 255, valid.bool())

        # padding: 255 exactly where the crop lies outside the (resized) image
        padded = (out_image == 0).all(dim=0)
        assert torch.equal(labels == 255, padded)
        draws = np.random.default_rng(seed)
        long_side = int(draws.integers(long_range[0], long_range[1] + 1))
        seen_flips.add(bool(draws.random() < 0.5))
        rh, rw = resize_long(image, long_side).shape[:2]
        rows, cols = torch.nonzero(~padded, as_tuple=True)
        height, width = min(crop, rh), min(crop, rw)
        assert rows.max() - rows.min() + 1 == height and cols.max() - cols.min() + 1 == width
        assert (~padded).sum() == height * width  # one solid rectangle
        seen_padding.add(bool(padded.any()))
        seen_crops.add(rh > crop or rw > crop)

        # inside: the label agrees with the colour rule
        from_colour = label_of_colour(out_image)
        inside = ~padded
        if long_range[0] == long_range[1] == max(image.shape[:2]):
            check = inside  # no resize: exact everywhere
        else:
            # resized: bicubic (image) and nearest (labels) may disagree next to a label edge,
            # so only pixels whose 3 x 3 neighbourhood has one label are checked
            lab = labels.clone()
            lab[padded] = -1
            window = F.max_pool2d(lab[None, None].float(), 3, 1, 1)[0, 0]
            low = -F.max_pool2d(-lab[None, None].float(), 3, 1, 1)[0, 0]
            check = inside & (window == low)
            check[[0, -1], :] = check[:, [0, -1]] = False  # their neighbours outside the crop are unseen
            assert check.sum() > 0.3 * inside.sum()
        assert torch.equal(labels[check], from_colour[check]), f"seed {seed}"
        assert set(labels[inside].unique().tolist()) <= set(RED_OF_LABEL)  # nearest, never mixed
    assert seen_flips == {True, False}  # the seeds exercise flips, padding and cropping
    assert True in seen_padding and True in seen_crops


def test_with_labels_rejects_a_label_map_of_another_size():
    image, label_map = coloured_scene()
    with pytest.raises(ValueError, match="differ"):
        TrainTransform((40, 60), 32).with_labels(image, label_map[:-1], np.random.default_rng(0))


def test_affinity_dataset_names_a_label_png_of_the_wrong_size(tmp_path):
    root = generate(tmp_path / "toy", num_train=2, num_val=0, size=(32, 40), seed=0)
    source = build_source("custom", root)
    names = source.ids("train")
    label_dir = tmp_path / "labels"
    shape = read_image(source.image_path(names[0])).shape[:2]
    write_label_png(label_dir / f"{names[0]}.png", np.full(shape, 3, np.uint8))
    other = read_image(source.image_path(names[1])).shape[:2]
    write_label_png(label_dir / f"{names[1]}.png", np.zeros((other[0] + 3, other[1]), np.uint8))
    dataset = LabelMapDataset(source, "train", label_dir, TrainTransform((32, 40), 32))
    item = dataset[0]
    assert item["name"] == names[0] and item["image"].shape == (3, 32, 32)
    assert item["labels"].dtype == torch.int64 and set(item["labels"].unique().tolist()) <= {3, 255}
    assert (item["labels"] == 3).any()
    with pytest.raises(PipelineError) as info:
        dataset[1]
    assert str(label_dir / f"{names[1]}.png") in str(info.value) and "differs" in str(info.value)


def test_affinity_and_segmentation_networks_are_rebuilt_frozen_as_recorded():
    """Stage 5 and 7 checkpoints record ``frozen``; the inference stages rebuild with it
    (``pretrained="none"`` there means only: no initial weights, the checkpoint's follow)."""
    from net.affinity import affinity_net_of
    from net.segmentation import segmentation_net_of

    for recorded in (True, False):
        psa = affinity_net_of({"arch": "affinitynet", "backbone": "resnet18", "frozen": recorded})
        assert psa.frozen is recorded and psa.frozen_stages == (1 if recorded else 0)
        assert psa.backbone.bn1.weight.requires_grad is not recorded  # PSA freezes every BatchNorm
        seg = segmentation_net_of({"arch": "deeplabv2", "backbone": "resnet18", "frozen": recorded}, 3)
        assert seg.frozen is recorded and seg.backbone.bn1.weight.requires_grad is not recorded
    assert affinity_net_of({"arch": "irn", "backbone": "resnet18"}).frozen  # IRN: always
