"""BatchNorm folded into the convolution before it, for inference.

In eval mode a BatchNorm layer is an affine map per channel (its running statistics and
affine parameters), so a convolution followed by one equals a single convolution with
scaled weights and a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``).  That removes
every BatchNorm kernel of an inference pass (on the GPU, cuDNN's channels-last inference
BatchNorm was a third of make_cam's CUDA time: docs/performance.md) and changes the maps
only by float rounding.
"""
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _pairs(module):
    """(conv name, BatchNorm name) of the children of ``module`` where a BatchNorm follows a
    convolution: torchvision's ``convK`` / ``bnK`` attributes, consecutive children of a
    Sequential (a ResNet's shortcut, DeepLab-v3's head), and the pairs a module names in its
    ``conv_bn_pairs`` (EfficientNet-Lite's)."""
    children = dict(module.named_children())
    named = [(a, b) for a, b in getattr(module, "conv_bn_pairs", ())
             if isinstance(children.get(a), nn.Conv2d) and isinstance(children.get(b), nn.BatchNorm2d)]
    pairs = [(name, "bn" + name[len("conv"):]) for name in children if name.startswith("conv")
             and isinstance(children[name], nn.Conv2d)
             and isinstance(children.get("bn" + name[len("conv"):]), nn.BatchNorm2d)]
    if isinstance(module, nn.Sequential):
        names = list(children)
        pairs += [(a, b) for a, b in zip(names, names[1:])
                  if isinstance(children[a], nn.Conv2d) and isinstance(children[b], nn.BatchNorm2d)]
    return pairs + named


def fold_batchnorm(model):
    """``model`` (in eval mode; changed in place and returned) with every BatchNorm that
    follows a convolution folded into it and replaced by an identity.  Only for inference:
    the folded network no longer trains as the original would."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode: BatchNorm folds with its running statistics")
    for module in list(model.modules()):
        for conv_name, bn_name in _pairs(module):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, nn.Identity())
    return model
