"""PSA's two backbones, ResNet-38 and VGG-16, for the plain CAM classifier and AffinityNet
(docs/method.md §4.1, docs/psa.md): building them with their ImageNet weights, and reading
PSA's released state dicts (``res38_cls.pth``, ``res38_aff.pth``, ``vgg16_cls.pth``,
``vgg16_aff.pth``) as checkpoints of this pipeline.

Both give three stride-8 feature levels (``level_channels``), the last of which is the CAM's
input; both convert the pipeline's ImageNet-normalised input to their own (``prepare``).
"""
from pathlib import Path

import torch

from net.backbone import backbone_state
from net.resnet38 import ResNet38, mxnet_to_resnet38, read_mxnet_params
from net.vgg16 import VGG16
from tools.io import PipelineError
from tools.torch_files import read_torch_file

PSA_BACKBONES = ("resnet38", "vgg16")
# The ImageNet files: MXNet's model A1, and DeepLab's vgg16_20M.caffemodel as PSA's converter
# writes it (a torch state dict of Caffe's layer names); ``--pretrained imagenet`` looks for
# them in the torch hub cache, as the torchvision weights
IMAGENET_FILES = {"resnet38": "ilsvrc-cls_rna-a1_cls1000_ep-0001.params", "vgg16": "vgg16_20M.pth"}
IMAGENET_SOURCES = {"resnet38": "https://github.com/itijyou/ademxapp (model A1, ILSVRC 2012)",
                    "vgg16": "vgg16_20M.caffemodel (DeepLab's init models), converted by PSA's "
                             "network/vgg16d.py convert_caffe_to_torch and saved with torch.save"}
DROPOUT = 0.5  # before the classifier, as PSA's dropout7 / drop7
AFFINITY_NORMS = {"resnet38": None, "vgg16": (8, 16, 32)}  # GroupNorm groups after each side conv (PSA's gn8_*)


def build_psa_backbone(name, pretrained="imagenet", frozen=True, role="cam"):
    """ResNet-38 or VGG-16 (VGG-16's ``fc6`` at dilation 4 for ``role`` ``affinity``, 1 for
    ``cam``, as PSA's), with the weights ``pretrained`` names (``imagenet``, ``none`` or a
    file) and PSA's freezing when ``frozen``."""
    model = ResNet38(frozen) if name == "resnet38" else VGG16(4 if role == "affinity" else 1, frozen)
    if pretrained != "none":
        path = imagenet_path(name) if pretrained == "imagenet" else Path(pretrained)
        load_backbone_weights(model, read_backbone_weights(path), path)
    return model


def imagenet_path(name):
    path = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILES[name]
    if not path.is_file():
        raise PipelineError(f"{path}: ImageNet weights of {name} not found (offline). Put "
                            f"{IMAGENET_SOURCES[name]} there, or pass --pretrained /path/to/the/file")
    return path


def read_backbone_weights(path):
    """The tensors of a weights file: MXNet's NDArray list (by its magic) or a torch file
    (a state dict, or the ``backbone.*`` tensors of a checkpoint of this pipeline)."""
    if not path.is_file():
        raise PipelineError(f"{path}: weights file not found (--pretrained takes imagenet, none or a path)")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) == 8 and int.from_bytes(head, "little") == 0x112:
        return mxnet_to_resnet38(read_mxnet_params(path))
    return backbone_state(read_torch_file(path, "weights"), path)


def load_backbone_weights(model, state, path):
    """Every parameter and BatchNorm statistic of ``model`` from ``state`` (others, such as
    an ImageNet classifier's, ignored); a missing or misshapen one is one line naming the file."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state]
    misshapen = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if missing or misshapen:
        example = (f"{misshapen[0]} is {tuple(state[misshapen[0]].shape)}, needs {tuple(expected[misshapen[0]])}"
                   if misshapen else f"no {missing[0]}")
        raise PipelineError(f"{path}: not weights of PSA's {type(model).__name__} ({len(missing)} tensors missing, "
                            f"{len(misshapen)} of another shape; {example})")
    model.load_state_dict({k: state[k] for k in expected}, strict=False)


# ---- PSA's released files ------------------------------------------------------------------------------

# PSA's names of the layers this pipeline names otherwise: the classifier's fc8, AffinityNet's
# side convolutions f8_3..f8_5, their GroupNorms (VGG-16) and the fusing f9
HEAD_NAMES = {"fc8": "classifier", "f8_3": "side.0", "f8_4": "side.1", "f8_5": "side.2",
              "gn8_3": "side_norm.0", "gn8_4": "side_norm.1", "gn8_5": "side_norm.2", "f9": "fuse"}
BACKBONE_KEYS = {"conv1a.weight": "resnet38", "conv1_1.weight": "vgg16"}


def pipeline_name(key):
    """This pipeline's name of a parameter of PSA's networks."""
    layer, _, rest = key.partition(".")
    return f"{HEAD_NAMES[layer]}.{rest}" if layer in HEAD_NAMES else f"backbone.{key}"


def released_checkpoint(state, path):
    """A checkpoint of this pipeline holding a state dict PSA released, recognised by its
    keys: the backbone by its first convolution, the network by its head (``fc8``: the
    CAM classifier of 20 classes plus background; ``f9``: AffinityNet).  BatchNorm's
    ``num_batches_tracked``, which PyTorch 0.4.0's files lack, is added.  Anything else is
    one line naming the file."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError(f"{path}: not a checkpoint of this pipeline, nor a state dict of PSA's networks")
    backbone = next((name for key, name in BACKBONE_KEYS.items() if key in state), None)
    head = "fc8.weight" in state, "f9.weight" in state
    if backbone is None or head.count(True) != 1:
        raise PipelineError(f"{path}: not a checkpoint of this pipeline, nor a state dict of PSA's ResNet-38 or "
                            f"VGG-16 networks (no conv1a or conv1_1 with fc8 or f9; e.g. {sorted(state)[:3]})")
    model = {pipeline_name(key): value for key, value in state.items()}
    for key in [k for k in model if k.endswith(".running_mean")]:
        model.setdefault(key.replace("running_mean", "num_batches_tracked"), torch.tensor(0))
    if head[0]:
        return {"kind": "cam", "method": "cam", "backbone": backbone, "frozen": True, "released": "psa",
                "num_classes": int(state["fc8.weight"].shape[0]) + 1, "model": model}
    return {"kind": "affinity", "arch": "affinitynet", "backbone": backbone, "frozen": True, "released": "psa",
            "radius": 5, "crop_size": 448, "model": model}
