"""PSA's wide ResNet-38 ("model A1" of Wu et al.), the backbone of PSA's published table
(docs/method.md §4.1, docs/psa.md).

Pre-activation residual blocks at output stride 8: ``conv1a``, then the blocks ``b2``..``b4``
at strides 2, 2, 2, ``b5`` at dilation 2, the bottleneck blocks ``b6`` and ``b7`` at dilation
4 (dropout 0.3 and 0.5 inside), and ``bn7``: 4096 channels.  Module and parameter names are
PSA's, so that its released state dicts load as they are.  The input is the pipeline's
(ImageNet mean and std on [0, 1] RGB), which is PSA's for this network.

The ImageNet weights are MXNet's ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``, read here
without MXNet (``read_mxnet_params``) and renamed to these modules (``mxnet_to_resnet38``).
"""
import re
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tools.io import PipelineError

LEVEL_CHANNELS = (512, 1024, 4096)  # conv4 (b5's input, activated), conv5 (b6's input), conv6 (bn7)


class ResBlock(nn.Module):
    """Two 3x3 convolutions after a shared BN-ReLU; a 1x1 shortcut on the activated input
    where the shape changes.  ``first_dilation`` is that of the first convolution."""

    def __init__(self, in_channels, mid_channels, out_channels, stride=1, dilation=1, first_dilation=None,
                 norm=nn.BatchNorm2d):
        super().__init__()
        first = dilation if first_dilation is None else first_dilation
        self.bn_branch2a = norm(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, mid_channels, 3, stride, padding=first, dilation=first,
                                       bias=False)
        self.bn_branch2b1 = norm(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        self.conv_branch1 = (nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
                             if in_channels != out_channels or stride != 1 else None)

    def forward(self, x):
        """(output, the block's activated input)."""
        activated = F.relu(self.bn_branch2a(x))
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(activated)
        branch = self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(activated))))
        return shortcut + branch, activated


class BottleneckBlock(nn.Module):
    """1x1 (to a quarter), dilated 3x3 (to a half), 1x1 (to the width), pre-activated, with
    Dropout2d before the last two convolutions; always a 1x1 shortcut, as PSA's."""

    def __init__(self, in_channels, out_channels, dilation, dropout, norm=nn.BatchNorm2d):
        super().__init__()
        quarter, half = out_channels // 4, out_channels // 2
        self.bn_branch2a = norm(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, quarter, 1, bias=False)
        self.bn_branch2b1 = norm(quarter)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(quarter, half, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = norm(half)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(half, out_channels, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        activated = F.relu(self.bn_branch2a(x))
        branch = self.conv_branch2a(activated)
        branch = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch))))
        branch = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch))))
        return self.conv_branch1(activated) + branch, activated


# (name, in, mid, out, stride, dilation, first dilation) of the plain blocks
PLAIN_BLOCKS = (
    ("b2", 64, 128, 128, 2, 1, None), ("b2_1", 128, 128, 128, 1, 1, None), ("b2_2", 128, 128, 128, 1, 1, None),
    ("b3", 128, 256, 256, 2, 1, None), ("b3_1", 256, 256, 256, 1, 1, None), ("b3_2", 256, 256, 256, 1, 1, None),
    ("b4", 256, 512, 512, 2, 1, None), *((f"b4_{i}", 512, 512, 512, 1, 1, None) for i in range(1, 6)),
    ("b5", 512, 512, 1024, 1, 2, 1), ("b5_1", 1024, 512, 1024, 1, 2, None), ("b5_2", 1024, 512, 1024, 1, 2, None),
)


class ResNet38(nn.Module):
    """PSA's ResNet-38 without classifier: ``forward`` gives the three feature levels
    AffinityNet reads (``conv4``: b5's activated input, 512 channels; ``conv5``: b6's, 1024;
    ``conv6``: relu(bn7), 4096, the CAM's input), all at stride 8.

    ``frozen``: PSA's training, which freezes ``conv1a`` and ``b2``..``b2_2`` and every
    BatchNorm (statistics and affine); not frozen, everything trains.
    """

    level_channels = LEVEL_CHANNELS
    cam_sqrt = False  # PSA's ResNet-38 CAM is relu(fc8(conv6))

    def __init__(self, frozen=True):
        super().__init__()
        norm = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        for name, cin, mid, cout, stride, dilation, first in PLAIN_BLOCKS:
            setattr(self, name, ResBlock(cin, mid, cout, stride, dilation, first, norm))
        self.b6 = BottleneckBlock(1024, 2048, dilation=4, dropout=0.3, norm=norm)
        self.b7 = BottleneckBlock(2048, 4096, dilation=4, dropout=0.5, norm=norm)
        self.bn7 = norm(4096)
        if frozen:
            for module in (self.conv1a, self.b2, self.b2_1, self.b2_2, *self.norms()):
                module.requires_grad_(False)

    def norms(self):
        return [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]

    @staticmethod
    def prepare(images):
        """The pipeline's ImageNet-normalised input is this network's."""
        return images

    def levels(self, x):
        x = self.conv1a(x)
        for name, *_ in PLAIN_BLOCKS[:-3]:
            x = getattr(self, name)(x)[0]
        x, conv4 = self.b5(x)
        x = self.b5_2(self.b5_1(x)[0])[0]
        x, conv5 = self.b6(x)
        x = self.b7(x)[0]
        return conv4, conv5, F.relu(self.bn7(x))

    def forward(self, images):
        return self.levels(self.prepare(images))


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm on its running statistics in training too (PSA keeps ResNet-38's BatchNorm
    in eval mode); its affine parameters are frozen by ``ResNet38``."""

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


# ---- MXNet's NDArray list (.params) -------------------------------------------------------------------

LIST_MAGIC = 0x112
ARRAY_MAGIC_V1, ARRAY_MAGIC_V2 = 0xF993FAC8, 0xF993FAC9
DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64}


class _Reader:
    """Little-endian fields of a byte string; running past its end is a ValueError."""

    def __init__(self, data):
        self.data, self.offset = data, 0

    def take(self, fmt):
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.data):
            raise ValueError(f"truncated at byte {self.offset} (needs {size} more, has {len(self.data) - self.offset})")
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return values if len(values) > 1 else values[0]

    def array(self, dtype, count):
        dtype = np.dtype(dtype).newbyteorder("<")
        raw = self.take(f"<{count * dtype.itemsize}s")
        return np.frombuffer(raw, dtype=dtype, count=count)


def _read_ndarray(reader):
    """One NDArray: a V2 header (magic, storage type 0, int64 shape), a V1 header (magic,
    int64 shape) or the legacy one (uint32 shape); then context, dtype flag, raw data."""
    first = reader.take("<I")
    if first == ARRAY_MAGIC_V2:
        storage = reader.take("<i")
        if storage != 0:
            raise ValueError(f"a sparse array (storage type {storage}); only dense arrays are weights")
        ndim = reader.take("<I")
        shape = tuple(int(d) for d in reader.array(np.int64, ndim))
    elif first == ARRAY_MAGIC_V1:
        ndim = reader.take("<I")
        shape = tuple(int(d) for d in reader.array(np.int64, ndim))
    else:  # legacy: the first field is the number of dimensions
        if first > 32:
            raise ValueError(f"no NDArray header at byte {reader.offset - 4} (0x{first:x})")
        shape = tuple(int(d) for d in reader.array(np.uint32, first))
    if not shape:
        return np.zeros(0, np.float32)
    reader.take("<ii")  # the context: device type and id
    flag = reader.take("<i")
    if flag not in DTYPES:
        raise ValueError(f"unknown dtype flag {flag}")
    return reader.array(DTYPES[flag], int(np.prod(shape))).reshape(shape).copy()


def read_mxnet_params(path):
    """{name: numpy array} of an MXNet NDArray list file (``mx.nd.save``: magic 0x112, a
    reserved word, the arrays, then their names), parsed with numpy; names keep MXNet's
    ``arg:`` / ``aux:`` prefixes.  A file of another kind or a truncated one is a
    PipelineError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: MXNet weights file not found")
    reader = _Reader(path.read_bytes())
    try:
        magic, _ = reader.take("<QQ")
        if magic != LIST_MAGIC:
            raise ValueError(f"its first word is 0x{magic:x}, not MXNet's NDArray list magic 0x{LIST_MAGIC:x}")
        arrays = [_read_ndarray(reader) for _ in range(reader.take("<Q"))]
        names = [reader.take(f"<{reader.take('<Q')}s").decode() for _ in range(reader.take("<Q"))]
    except (ValueError, struct.error, UnicodeDecodeError, MemoryError) as exc:
        raise PipelineError(f"{path}: not an MXNet .params file ({exc})") from exc
    if len(names) != len(arrays):
        raise PipelineError(f"{path}: not an MXNet .params file ({len(arrays)} arrays, {len(names)} names)")
    return dict(zip(names, arrays))


BN_PARAMS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}
_BLOCK_NAME = re.compile(r"(res|bn)(\d)(a|b(\d+))_(branch\w+?)_(weight|gamma|beta|moving_mean|moving_var)")


def mxnet_name(name):
    """The ``ResNet38`` parameter of an MXNet name of model A1, or None for its ImageNet
    classifier (``linear1000``) and names it does not have.  ``res4b3_branch2a_weight`` is
    ``b4_3.conv_branch2a.weight``; ``bn5a_branch2b1_gamma`` ``b5.bn_branch2b1.weight``;
    ``bn7_moving_var`` ``bn7.running_var``; ``conv1a_weight`` ``conv1a.weight``."""
    name = name.split(":", 1)[-1]
    if name == "conv1a_weight":
        return "conv1a.weight"
    if name.startswith("bn7_") and name[4:] in BN_PARAMS:
        return f"bn7.{BN_PARAMS[name[4:]]}"
    match = _BLOCK_NAME.fullmatch(name)
    if match is None:
        return None
    kind, stage, _, index, branch, param = match.groups()
    block = f"b{stage}" if index is None else f"b{stage}_{index}"
    layer = "conv" if kind == "res" else "bn"
    return f"{block}.{layer}_{branch}.{BN_PARAMS.get(param, param)}"


def mxnet_to_resnet38(params):
    """The ``ResNet38`` state dict of an MXNet ImageNet file's arrays (``read_mxnet_params``)."""
    renamed = {mxnet_name(name): torch.from_numpy(np.ascontiguousarray(value)) for name, value in params.items()}
    renamed.pop(None, None)
    return renamed
