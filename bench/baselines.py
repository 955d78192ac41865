"""The SPEC definitions written literally, as baselines for the benchmarks and references
for the tests."""
import torch
import torch.nn.functional as F


def broadcast_structure_seeds(cam, feature, valid, bg_scale=0.5):
    """SPEC 5.4 with the HW x HW x C broadcast the published code uses."""
    n, c, h, w = cam.shape
    f = feature.flatten(2)
    f = f / (f.norm(dim=1, keepdim=True) + 1e-5)
    similarity = F.relu(f.transpose(1, 2) @ f)  # [N, HW, HW]
    m = cam.flatten(2)  # [N, C, HW]
    inter = (similarity[:, None, :, :] * m[:, :, None, :]).sum(-1)  # [N, C, HW]
    union = similarity.sum(-1)[:, None, :] + m.sum(-1)[:, :, None] - inter
    iou = inter / union
    iou[:, 0] *= bg_scale
    seeds = torch.zeros_like(m)
    seeds.scatter_(1, iou.argmax(1, keepdim=True), 1)
    return seeds.view(n, c, h, w) * valid
