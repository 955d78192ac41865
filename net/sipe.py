"""SIPE and AE-SIPE: CAMs sharpened by image-specific prototypes (docs/method.md §5, §6), and the
choice between them and the plain CAM classifier (``--method``)."""
import torch
import torch.nn.functional as F
from torch import nn

from net.backbone import stage_channels
from net.cam import CAMNet, psa_cam
from net.pamr import PAMR
from net.precision import full_precision
from net.psa_backbones import PSA_BACKBONES
from tools.cam_maps import ScaleMaps, max_normalize, with_background
from tools.io import PipelineError
from tools.normalization import denormalize

PROTOTYPE_METHODS = ("sipe", "ae_sipe")
METHODS = ("cam",) + PROTOTYPE_METHODS  # cam: PSA's plain CAM classifier (docs/method.md §5.10)
SIDE_CHANNELS = (128, 128, 256, 256)


def prototype_backbone_error(method, backbone):
    """Why SIPE's prototype methods do not run on PSA's backbones."""
    return (f"--method {method} reads the four stage outputs x1..x4 of a ResNet (docs/method.md §5.3); "
            f"--backbone {backbone} (PSA's) gives three stride-8 levels: use it with --method cam")


def l2_normalize(x, dim=1, eps=1e-5):
    """``x / (||x|| + eps)`` along ``dim`` (docs/method.md §5.3)."""
    return x / (x.norm(dim=dim, keepdim=True) + eps)


def normalized_cam(cam):
    """docs/method.md §5.2: ``relu(cam)`` over its per-channel max, background ``1 - max_c`` prepended."""
    return with_background(max_normalize(F.relu(cam)), dim=1)


def label_mask(labels):
    """[N, C-1] multi-hot labels -> [N, C, 1, 1] with the background always on."""
    background = torch.ones_like(labels[:, :1])
    return torch.cat([background, labels], dim=1)[..., None, None]


# Elements of one block of the self-similarity in ``structure_seeds`` (256 MiB of float32):
# an image at scale 2 of VOC (500 px) or COCO (640 px) fits one block, a larger one is split
SIMILARITY_BLOCK = 1 << 26


@torch.no_grad()
def structure_seeds(cam, feature, valid, bg_scale=0.5):
    """docs/method.md §5.4: one-hot seeds [N,C,h,w] from the IoU of each class map with each pixel's
    self-similarity row, as matrix products (no HW x HW x C tensor).  Seeds are discrete:
    no gradient flows through them, so no graph is kept.

    The HW x HW similarity is made in blocks of columns of at most ``SIMILARITY_BLOCK``
    elements, so memory grows with the pixels, not their square: each column block gives
    its columns of the intersections exactly and adds to the row sums.

    cam [N,C,h,w] with background first, feature [N,D,h,w], valid [N,C,1,1] or [N,C,h,w].
    """
    n, c, h, w = cam.shape
    f = l2_normalize(full_precision(feature.flatten(2)), dim=1)
    m = full_precision(cam.flatten(2)).to(f.dtype)  # [N, C, HW]
    inter = torch.empty_like(m)
    row_sums = 0
    columns = max(1, SIMILARITY_BLOCK // (n * h * w))
    for start in range(0, h * w, columns):
        block = slice(start, start + columns)
        similarity = (f.transpose(1, 2) @ f[:, :, block]).clamp_min_(0)  # relu(f^T f) [N, HW, columns]
        inter[:, :, block] = m @ similarity  # inter[k, i] = sum_j M_kj S_ji = sum_j S_ij M_kj (S symmetric)
        row_sums = row_sums + similarity.sum(dim=2)
    union = row_sums.unsqueeze(1) + m.sum(dim=2, keepdim=True) - inter
    iou = inter / union.clamp_min(1e-12)
    iou[:, 0] *= bg_scale
    return one_hot_argmax(iou.view(n, c, h, w), valid).to(cam.dtype)


def prototypes(seeds, feature):
    """docs/method.md §5.5: [N,C,D], the mean feature over each class's seed pixels (zero if it has none).

    Seeds are nearest-resized to the feature size.
    """
    feature = full_precision(feature)
    seeds = F.interpolate(seeds.to(feature.dtype), feature.shape[-2:], mode="nearest")
    total = torch.einsum("nchw,ndhw->ncd", seeds, feature)
    count = seeds.sum(dim=(2, 3)).clamp_min(1).unsqueeze(-1)
    return total / count


def reactivate(prototypes, feature, eps=1e-8):
    """docs/method.md §5.6: IS-CAM [N,C,h,w] = relu(cos(feature_i, prototype_k))."""
    p = prototypes / prototypes.norm(dim=2, keepdim=True).clamp_min(eps)
    f = full_precision(feature)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(eps)
    return F.relu(torch.einsum("ncd,ndhw->nchw", p, f))


def one_hot_argmax(maps, valid=None):
    """Seeds from the argmax over classes of ``maps`` [N,C,h,w], masked by ``valid`` if
    given (docs/method.md §5.4, §6.3).  A scatter, not F.one_hot, which waits for the GPU to check its input."""
    seeds = torch.zeros_like(maps).scatter_(1, maps.argmax(dim=1, keepdim=True), 1)
    return seeds if valid is None else seeds * valid


def gsc_loss(cam, is_cam):
    """docs/method.md §5.7: ``mean |M - IS / (max_hw IS + 1e-5)|``."""
    return (cam - max_normalize(is_cam)).abs().mean()


def quarter_size(image):
    """The [0,1] RGB image bilinearly resized to 1/4 (align_corners=True), for PAMR."""
    size = (max(1, image.shape[-2] // 4), max(1, image.shape[-1] // 4))
    return F.interpolate(image, size, mode="bilinear", align_corners=True)


class SIPENet(CAMNet):
    """The CAM classifier with the SIPE (or AE-SIPE) prototype branch (docs/method.md §4-6): side
    convs to the hierarchical features, and PAMR for AE-SIPE."""

    def __init__(self, num_classes, method="sipe", pretrained="imagenet", backbone="resnet50", seed_bg_scale=0.5,
                 frozen=None):
        if method not in PROTOTYPE_METHODS:
            raise ValueError(f"method must be one of {PROTOTYPE_METHODS}, not {method!r}")
        if backbone in PSA_BACKBONES:
            raise PipelineError(prototype_backbone_error(method, backbone))
        super().__init__(num_classes, pretrained, backbone, frozen)
        self.method = method
        self.seed_bg_scale = seed_bg_scale
        self.side = nn.ModuleList(nn.Conv2d(cin, cout, 1, bias=False)
                                  for cin, cout in zip(stage_channels(backbone), SIDE_CHANNELS))
        self.pamr = PAMR() if method == "ae_sipe" else None

    def new_layers(self):
        return [self.classifier, self.side]

    def extract(self, images):
        """Backbone pass: (raw CAM [N,C-1,h,w], hierarchical features [N,768,h,w], x4) (docs/method.md §5.1, §5.3)."""
        _, x1, x2, x3, x4 = self.stages(images)
        size = x3.shape[-2:]
        hierarchy = [F.interpolate(l2_normalize(side(x.detach())), size, mode="bilinear", align_corners=False)
                     for side, x in zip(self.side, (x1, x2, x3, x4))]
        return self.classifier(x4), torch.cat(hierarchy, dim=1), x4

    def prototype_maps(self, cam, hierarchy, seed_feature, valid, images):
        """IS-CAM and, for AE-SIPE, the max-normalised AE-IS-CAM (docs/method.md §5.4-5.6, §6.2-6.3).

        cam is the normalised CAM with background [N,C,h,w]; seeds come from
        ``seed_feature`` masked by ``valid``; images are the normalised input.
        Computed in full precision, also under AMP: the seeds are an argmax of small differences.
        """
        with torch.autocast(cam.device.type, enabled=False):
            return self._prototype_maps(full_precision(cam), full_precision(hierarchy),
                                        full_precision(seed_feature), valid, images)

    def _prototype_maps(self, cam, hierarchy, seed_feature, valid, images):
        seeds = structure_seeds(cam, seed_feature, valid, self.seed_bg_scale)
        is_cam = reactivate(prototypes(seeds, hierarchy), hierarchy)
        if self.pamr is None:
            return is_cam, None
        refined = self.pamr(quarter_size(denormalize(images.float())), is_cam.detach())
        refined = F.interpolate(refined, is_cam.shape[-2:], mode="bilinear", align_corners=True)
        ae_seeds = one_hot_argmax(refined)  # not masked, as published (docs/method.md §6.3)
        ae_is_cam = max_normalize(reactivate(prototypes(ae_seeds, hierarchy), hierarchy))
        return is_cam, ae_is_cam

    def forward(self, images, labels, valid_pixels):
        """Training pass (docs/method.md §5.1-5.7): the classification and GSC losses and the scores.

        images [N,3,H,W] normalised, labels [N,C-1] multi-hot, valid_pixels [N,H,W].
        SIPE's training seeds come from ``x4``, AE-SIPE's from the hierarchical features;
        the CAM and the seeds are masked by the labels and the crop's valid pixels.
        """
        raw_cam, hierarchy, x4 = self.extract(images)
        score = raw_cam.mean(dim=(2, 3))
        cls_loss = F.multilabel_soft_margin_loss(score, labels)
        size = hierarchy.shape[-2:]
        cam = F.interpolate(normalized_cam(raw_cam), size, mode="bilinear", align_corners=True)
        pixels = F.interpolate(valid_pixels[:, None].float(), size, mode="nearest")
        valid = label_mask(labels) * pixels
        cam = cam * valid
        seed_feature = hierarchy if self.method == "ae_sipe" else x4.detach()
        is_cam, ae_is_cam = self.prototype_maps(cam, hierarchy, seed_feature, valid, images)
        target = ae_is_cam if ae_is_cam is not None else is_cam
        return {"cls_loss": cls_loss, "gsc_loss": gsc_loss(cam, target), "score": score}


@torch.no_grad()
def scale_maps(model, image, valid):
    """The maps of one scale (docs/method.md §5.9): image [1,3,H,W] normalised, fused with its flip.

    The CAMs and hierarchical features of the image and its flip are summed (flip undone);
    the seeds come from the hierarchical features, for SIPE too, masked by ``valid``
    (the labels) while the CAM is not; AE-SIPE's PAMR sees the unflipped image.
    Returns a dict of [1,C,h,w] maps: ``plain_cam`` (foreground channels only),
    ``is_cam`` and, for AE-SIPE, ``ae_is_cam``.
    """
    raw_cam, hierarchy, _ = model.extract(torch.cat([image, image.flip(-1)]))
    raw_cam, hierarchy = (x[:1] + x[1:].flip(-1) for x in (raw_cam, hierarchy))
    cam = F.interpolate(normalized_cam(full_precision(raw_cam)), hierarchy.shape[-2:], mode="bilinear",
                        align_corners=True)
    is_cam, ae_is_cam = model.prototype_maps(cam, hierarchy, hierarchy, valid, image)
    maps = {"plain_cam": cam[:, 1:], "is_cam": is_cam}
    if ae_is_cam is not None:
        maps["ae_is_cam"] = ae_is_cam
    return maps


@torch.no_grad()
def multiscale_maps(model, scaled_images, keys, size):
    """Multi-scale + flip inference (docs/method.md §5.9) for one image.

    scaled_images: the image at each scale, normalised [1,3,h,w] tensors (the resizing,
    PIL's bicubic on the uint8 image, is ``data.transforms.scaled_images``); keys int64 [K]
    (0 first, then the image's classes); size the image's (H, W).  Returns {name: ScaleMaps}
    for ``plain_cam``, ``is_cam`` (and ``ae_is_cam``): each scale's maps of the image's
    channels, which ``ScaleMaps.fused`` resizes to ``size`` (bilinear), sums and normalises
    to [0,1] [K,H,W], background first.
    """
    num_classes = model.classifier.out_channels + 1
    valid = torch.zeros(1, num_classes, 1, 1, device=keys.device)
    valid[0, keys] = 1
    per_scale = {}
    for scaled in scaled_images:
        for name, value in scale_maps(model, scaled, valid).items():
            per_scale.setdefault(name, []).append(value[0, keys[1:] - 1] if name == "plain_cam" else value[0, keys])
    return {name: ScaleMaps(scales, tuple(size), background=name == "plain_cam") for name, scales in per_scale.items()}


# The map that make_cam's CAM files hold as ``cam``, for each prototype method
FINAL_MAP = {"sipe": "is_cam", "ae_sipe": "ae_is_cam"}


def build_classifier(num_classes, method="sipe", pretrained="imagenet", backbone="resnet50", seed_bg_scale=0.5,
                     frozen=None):
    """Stage 1's network for ``--method``: the plain CAM classifier (``cam``) or SIPENet."""
    if method == "cam":
        return CAMNet(num_classes, pretrained, backbone, frozen)
    return SIPENet(num_classes, method, pretrained, backbone, seed_bg_scale, frozen)


def classifier_of(checkpoint, num_classes):
    """The classifier a stage-1 checkpoint holds (without its weights), built with the
    settings it trained with: method, backbone, the structure seeds' background factor
    (``seed_bg_scale``; ``bg_scale`` in checkpoints of before its rename), what was frozen
    (checkpoints that record none of these: the defaults, frozen as published)."""
    seed_bg_scale = checkpoint.get("seed_bg_scale", checkpoint.get("bg_scale", 0.5))
    return build_classifier(num_classes, checkpoint["method"], pretrained="none",
                            backbone=checkpoint.get("backbone", "resnet50"), seed_bg_scale=seed_bg_scale,
                            frozen=checkpoint.get("frozen", True))


def inference_maps(model, scaled_images, keys, size):
    """make_cam's maps of one image (docs/method.md §5.9, §5.10): {name: ScaleMaps of [K,H,W]} with the
    method's final map under ``cam``; SIPENet adds ``plain_cam`` and ``is_cam``."""
    if isinstance(model, SIPENet):
        maps = multiscale_maps(model, scaled_images, keys, size)
        return {"cam": maps[FINAL_MAP[model.method]], "plain_cam": maps["plain_cam"], "is_cam": maps["is_cam"]}
    return {"cam": psa_cam(model, scaled_images, keys, size)}


def classifier_losses(model, batch):
    """Classification loss, plus SIPE's GSC loss (docs/method.md §5.7, §5.10), of one batch."""
    out = model(batch["image"], batch["label"], batch["valid"])
    return {"cls": out["cls_loss"], **({"gsc": out["gsc_loss"]} if "gsc_loss" in out else {})}
