"""How a network's trainable parameters split into optimizer groups (docs/method.md §5.8, §9, §13).

A group is a dict: ``params``, ``new`` (a layer added to the backbone: its learning rate is
multiplied by ``--new-layer-lr-mult``) and ``bias`` (PSA's rule for biases: twice the
learning rate and no weight decay).  ``engine.train.build_optimizer`` turns them into SGD
groups.
"""


def trainable(modules):
    """The parameters of ``modules`` that get gradients, in module order."""
    return [p for module in modules for p in module.parameters() if p.requires_grad]


def group(params, new, bias=False):
    return {"params": list(params), "new": new, "bias": bias}


def layer_groups(pretrained, new):
    """Two groups (docs/method.md §5.8, §13): the trainable parameters of the ``pretrained`` modules at
    the base learning rate, those of the ``new`` modules at the new-layer rate, weight
    decay on both."""
    return [group(trainable(pretrained), new=False), group(trainable(new), new=True)]


def psa_groups(pretrained, new):
    """PSA's four groups (docs/method.md §9): pretrained weights (lr x1, decay), pretrained biases
    (x2, no decay), new weights (x new-layer mult, decay), new biases (x 2 new-layer mult,
    no decay).  A parameter is a bias by its name, as PSA sorts the ``weight`` and ``bias``
    of each layer; a normalisation layer's scale counts as a weight, as PSA's GroupNorm."""
    groups = []
    for modules, is_new in ((pretrained, False), (new, True)):
        named = [(name, p) for module in modules for name, p in module.named_parameters() if p.requires_grad]
        groups.append(group((p for name, p in named if not name.endswith("bias")), new=is_new))
        groups.append(group((p for name, p in named if name.endswith("bias")), new=is_new, bias=True))
    return groups
