"""How far the inference stages' outputs move with the memory format, BatchNorm folding and
mixed precision (``python -m bench precision``).

For make_cam (AE-SIPE: the plain CAM, IS-CAM and AE-IS-CAM of four scales with flips),
make_seg_labels (IRN's boundary map and the random walk's labels from the CAM) and
infer_seg (DeepLab-v2's five-scale probabilities), each variant is set against plain fp32
(contiguous, BatchNorm unfolded) on the same images, on the CPU (bf16 and fp16 round the
tensors as they would on a GPU, and TF32 does not interfere): the share of pixels whose argmax
agrees and the largest difference of a map value.  The variants: channels-last, BatchNorm
folded (``net.fold``), and autocast to bf16 and to fp16 on top of both.  The networks are
those of a finished run (``--run-dir``, e.g. the toy run's, with its dataset), or
torchvision's with random weights and BatchNorm statistics of their own activations
(``bench.pipeline.weights_file``) on generated VOC-size images; random networks give
near-uniform maps whose argmax flips at any rounding, so only a trained run says how
far a precision moves the outputs.  Targets: agreement >= 99.9 %,
difference <= 1e-2.
"""
import argparse
import copy
import tempfile
from pathlib import Path

import torch

from bench.measure import table
from bench.pipeline import weights_file
from data.datasets import InferenceDataset
from data.sources import build_source
from data.toy import generate
from data.transforms import scaled_images
from engine import stage
from engine.checkpoint import load_checkpoint, load_weights
from net.affinity import BoundaryNet, affinity_net_of, boundary_map, walk_irn
from net.fold import fold_batchnorm
from net.segmentation import build_segmentation_net, multiscale_probs, segmentation_net_of
from net.sipe import SIPENet, classifier_of, inference_maps
from tools import flags

CAM_SCALES = (1.0, 0.5, 1.5, 2.0)
SEG_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
# name: (channels-last, BatchNorm folded, autocast dtype or None)
VARIANTS = {"channels-last": (True, False, None), "folded": (False, True, None),
            "folded + channels-last": (True, True, None), "bf16 (folded, channels-last)": (True, True, torch.bfloat16),
            "fp16 (folded, channels-last)": (True, True, torch.float16)}
COLUMNS = ("stage", "output", "variant", "argmax agreement", "max difference", "within targets")


def agreement(reference, other):
    """(share of pixels whose argmax over the first axis agrees, largest absolute difference)
    of two maps [K, H, W]."""
    same = (reference.argmax(0) == other.argmax(0)).float().mean().item()
    return same, (reference - other).abs().max().item()


def variant_of(model, channels_last, folded):
    """A copy of ``model`` in eval mode, BatchNorm folded and channels-last as asked."""
    model = copy.deepcopy(model).eval()
    return stage.channels_last(fold_batchnorm(model) if folded else model, channels_last)


def outputs(models, item, dtype):
    """{(stage, output): [K, H, W]} of one image through the three stages' computations."""
    classifier, boundary_net, segmenter = models
    image = item["image"]
    keys = torch.as_tensor(item["keys"])
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        maps = {name: value.fused() for name, value in
                inference_maps(classifier, item["cam_scaled"], keys, image.shape[:2]).items()}
        boundary = boundary_map(boundary_net, item["seg_scaled"][SEG_SCALES.index(1.0)])
        walked = walk_irn(boundary, maps["cam"])
        probs = multiscale_probs(segmenter, item["seg_scaled"], image.shape[:2])
    found = {("make_cam", name): value.float() for name, value in maps.items()}
    found["make_seg_labels", "boundary"] = boundary.float()[None]
    found["make_seg_labels", "walk"] = walked.float()
    found["infer_seg", "probabilities"] = probs.float()
    return found


def networks(folder, run_dir=None, num_classes=5):
    """(make_cam's classifier, IRN's network, the segmentation network) in eval mode: those
    of a finished run (``run_dir/ckpt``: cam.pth, affinity.pth of IRN, seg.pth), or random
    ones with BatchNorm statistics of their activations (AE-SIPE, DeepLab-v2)."""
    if run_dir is None:
        weights = {name: str(weights_file(folder, name)) for name in ("resnet50", "resnet101")}
        torch.manual_seed(0)
        return [model.eval() for model in (SIPENet(num_classes, "ae_sipe", pretrained=weights["resnet50"]),
                                           BoundaryNet(pretrained=weights["resnet50"]),
                                           build_segmentation_net("deeplabv2", num_classes, "resnet101",
                                                                  weights["resnet101"]))]
    found = []
    for name, build in (("cam", lambda saved: classifier_of(saved, num_classes)), ("affinity", affinity_net_of),
                        ("seg", lambda saved: segmentation_net_of(saved, num_classes))):
        path = Path(run_dir) / "ckpt" / f"{name}.pth"
        saved = load_checkpoint(path, {"kind": name, **({"arch": "irn"} if name == "affinity" else {})})
        model = build(saved)
        load_weights(model, saved["model"], path)
        found.append(model.eval())
    return found


def run(images=4, image_size=(375, 500), run_dir=None, data_root=None):
    """One row per stage output and variant: the worst image's agreement and difference."""
    with tempfile.TemporaryDirectory() as folder:
        root = data_root or generate(Path(folder) / "data", num_train=images, num_val=1, size=image_size, seed=1)
        source = build_source("custom", root)
        items = [InferenceDataset(source, "train")[i] for i in range(min(images, len(source.ids("train"))))]
        for item in items:
            item["cam_scaled"] = scaled_images(item["image"], CAM_SCALES)
            item["seg_scaled"] = scaled_images(item["image"], SEG_SCALES)
        base = networks(folder, run_dir, source.num_classes)
        reference = [outputs(base, item, None) for item in items]
        rows = []
        for name, (channels_last, folded, dtype) in VARIANTS.items():
            models = [variant_of(model, channels_last, folded) for model in base]
            worst = {}
            for item, expected in zip(items, reference):
                for key, value in outputs(models, item, dtype).items():
                    same, diff = agreement(expected[key], value)
                    low, high = worst.get(key, (1.0, 0.0))
                    worst[key] = (min(low, same), max(high, diff))
            rows += [{"stage": key[0], "output": key[1], "variant": name, "argmax agreement": f"{same:.2%}",
                      "max difference": f"{diff:.2g}", "within targets": "yes" if same >= 0.999 and diff <= 1e-2
                      else "no"} for key, (same, diff) in worst.items()]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=flags.positive_int, default=4, help="images compared (the worst is shown)")
    parser.add_argument("--run-dir", help="the networks of this finished run (ckpt/cam.pth, an IRN affinity.pth, "
                                          "seg.pth; with --data-root: its dataset) instead of random weights")
    parser.add_argument("--data-root", help="a custom / toy dataset whose train images are compared")
    args = parser.parse_args(argv)
    if args.run_dir and not args.data_root:
        parser.error("--run-dir needs --data-root: the images of the classes its networks learnt")
    print(table(run(args.images, run_dir=args.run_dir, data_root=args.data_root), COLUMNS))


if __name__ == "__main__":
    main()
