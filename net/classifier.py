"""The image classifier of the pretraining step (``pretrain.py``): torchvision's ResNet as
it is trained on ImageNet, at its own stride 32, with its ``fc`` layer over the globally
pooled features and a softmax over single-label images.  Its ``backbone.*`` tensors are
what the stages load with ``--pretrained FILE``, as they load the ImageNet file."""
import torch.nn.functional as F
from torch import nn

from net.backbone import ARCHITECTURES, stage_channels
from net.parameters import layer_groups


class ImageClassifier(nn.Module):
    """A torchvision ResNet from random initialisation, BatchNorm training, ``fc`` to ``num_classes``."""

    def __init__(self, num_classes, backbone="resnet18"):
        super().__init__()
        self.backbone = ARCHITECTURES[backbone][0](weights=None)
        self.backbone.fc = nn.Linear(stage_channels(backbone)[-1], num_classes)

    def param_groups(self):
        """Every layer is learned here: one group at the base learning rate."""
        return layer_groups([self.backbone], [])

    def forward(self, images):
        return self.backbone(images)


def classification_loss(model, batch):
    """Softmax cross-entropy of one batch; the target is the image's one class (its multi-hot
    label's argmax: the corpus has one class per image)."""
    return {"ce": F.cross_entropy(model(batch["image"]), batch["label"].argmax(dim=1))}
