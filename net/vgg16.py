"""PSA's dilated VGG-16 (DeepLab's 20M-parameter "vgg16_20M"), the other backbone of PSA's
published table (docs/method.md §4.1, docs/psa.md).

Caffe's VGG-16 with biases, 3x3 max pools of stride 2, 2, 2, then 1 (``pool4``), ``conv5_*``
at dilation 2, and ``fc6`` (a 3x3 convolution to 1024: dilation 1 in PSA's classifier, 4 in
its AffinityNet) and ``fc7`` (1x1, 1024) as convolutions, Dropout2d 0.5 between them: output
stride 8.  Module and parameter names are Caffe's, as PSA's converter writes the ImageNet
weights and as PSA's released state dicts hold them.  Its input is Caffe's: BGR in [0, 255]
minus the mean pixel, no std; ``prepare`` turns the pipeline's ImageNet-normalised input into it.
"""
import torch
import torch.nn.functional as F
from torch import nn

from tools.normalization import IMAGENET_MEAN, IMAGENET_STD

CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)
LEVEL_CHANNELS = (512, 512, 1024)  # conv4 (relu(conv4_3)), conv5 (relu(conv5_3)), conv5fc (relu(fc7))
# (name, in, out) of the 3x3 convolutions, each block followed by a max pool (stride 2, 2, 2, 1, none)
BLOCKS = (
    (("conv1_1", 3, 64), ("conv1_2", 64, 64)),
    (("conv2_1", 64, 128), ("conv2_2", 128, 128)),
    (("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256)),
    (("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512)),
    (("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)),
)
POOL_STRIDES = (2, 2, 2, 1)
FROZEN = ("conv1_1", "conv1_2", "conv2_1", "conv2_2")  # PSA trains neither, in both networks


class VGG16(nn.Module):
    """PSA's VGG-16 without classifier: ``forward`` gives the three feature levels AffinityNet
    reads (``conv4``, ``conv5``: 512 channels; ``conv5fc``: relu(fc7), 1024, the CAM's input).

    ``fc6_dilation``: 1 for PSA's classifier, 4 for its AffinityNet.  ``frozen``: PSA's
    training, which freezes ``conv1_*`` and ``conv2_*``.
    """

    level_channels = LEVEL_CHANNELS
    cam_sqrt = True  # PSA's VGG-16 CAM is sqrt(relu(fc8(conv5fc)))

    def __init__(self, fc6_dilation=1, frozen=True):
        super().__init__()
        for index, block in enumerate(BLOCKS):
            for name, cin, cout in block:
                dilation = 2 if index == 4 else 1
                setattr(self, name, nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation))
        self.fc6 = nn.Conv2d(512, 1024, 3, padding=fc6_dilation, dilation=fc6_dilation)
        self.drop6 = nn.Dropout2d(0.5)
        self.fc7 = nn.Conv2d(1024, 1024, 1)
        if frozen:
            for name in FROZEN:
                getattr(self, name).requires_grad_(False)

    @staticmethod
    def prepare(images):
        """ImageNet-normalised RGB [N, 3, H, W] -> Caffe's input: BGR in [0, 255] minus the mean pixel."""
        mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        caffe_mean = torch.tensor(CAFFE_BGR_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return ((images * std + mean) * 255.0).flip(1) - caffe_mean

    def levels(self, x):
        outputs = []
        for index, block in enumerate(BLOCKS):
            for name, _, _ in block:
                x = F.relu(getattr(self, name)(x))
            if index >= 3:
                outputs.append(x)
            if index < 4:
                x = F.max_pool2d(x, 3, POOL_STRIDES[index], padding=1)
        outputs.append(F.relu(self.fc7(self.drop6(F.relu(self.fc6(x))))))
        return tuple(outputs)

    def forward(self, images):
        return self.levels(self.prepare(images))
