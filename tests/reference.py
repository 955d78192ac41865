"""One unbroken run of every stage on a tiny toy set (CPU), shared by the modules that test
the stages through their scripts (test_faults, test_seg_labels, test_segmentation): each
stage's flags, its output folder and, for training, its checkpoint.  The modules that use it
join the xdist group ``reference``, so that the run is made once per test session
(``tests/conftest.py``'s ``reference`` fixture)."""
from tests.scripts import run

# ResNet-18 from random weights, on the CPU, a loss line each step
FROM_SCRATCH = ["--backbone", "resnet18", "--pretrained", "none", "--device", "cpu", "--num-workers", "0",
                "--log-every", "1"]
# four steps a network (8 images, batch 2, one epoch)
TRAIN = [*FROM_SCRATCH, "--crop-size", "64", "--resize-long", "48", "64", "--batch-size", "2", "--epochs", "1"]
STEPS = 4
TOY = {"num_train": 8, "num_val": 3, "size": (48, 64), "seed": 2}


class Stage:
    """A stage script, its split, its output folder in the run directory, its flags (REF: the
    run directory whose outputs of the earlier stages it reads) and, for training, its
    checkpoint name."""

    def __init__(self, script, folder, flags, checkpoint=None, split="train"):
        self.script, self.folder, self.flags, self.checkpoint = script, folder, flags, checkpoint
        self.split = split

    def args(self, toy, ref, work):
        flags = [str(f).replace("REF", str(ref)) for f in self.flags]
        return ["--dataset", "custom", "--data-root", toy, "--split", self.split, "--work-dir", work, *flags]


STAGES = {
    "train_cam": Stage("train_cam.py", "ckpt", [*TRAIN, "--no-frozen", "--method", "sipe"], checkpoint="cam"),
    "make_cam": Stage("make_cam.py", "cam", ["--checkpoint", "REF/ckpt/cam.pth", "--device", "cpu",
                                             "--num-workers", "0", "--scales", "1.0"]),
    "make_affinity_labels": Stage("make_affinity_labels.py", "affinity_labels", ["--cam-dir", "REF/cam",
                                                                                 "--crf-workers", "1"]),
    # crop 80: IRN's stride-4 map of 20 x 20 has pairs at its training radius 10
    "train_affinity": Stage("train_affinity.py", "ckpt", [*TRAIN, "--crop-size", "80", "--arch", "irn", "--label-dir",
                                                          "REF/affinity_labels"], checkpoint="affinity"),
    "make_seg_labels": Stage("make_seg_labels.py", "pseudo_labels", ["--checkpoint", "REF/ckpt/affinity.pth",
                                                                     "--cam-dir", "REF/cam", "--device", "cpu"]),
    # crop 48, four iterations: the 8 images make 4 batches of 2, one pass
    "train_seg": Stage("train_seg.py", "ckpt", [*FROM_SCRATCH, "--no-frozen", "--crop-size", "48",
                                                "--batch-size", "2", "--iterations", str(STEPS), "--lr", "0.01",
                                                "--label-dir", "REF/pseudo_labels"],
                       checkpoint="seg"),
    "infer_seg": Stage("infer_seg.py", "segmentation/val", ["--checkpoint", "REF/ckpt/seg.pth", "--device", "cpu",
                                                            "--num-workers", "0", "--scales", "1.0", "0.5"],
                       split="val"),
}


def run_stage(name, toy, ref, work, *extra, check=True, preexec_fn=None):
    """Stage ``name`` of the reference run, reading the earlier stages' outputs in ``ref`` and
    writing to ``work`` (``extra`` flags last, so that they win)."""
    stage = STAGES[name]
    return run(stage.script, *stage.args(toy, ref, work), *extra, check=check, preexec_fn=preexec_fn)


def make_reference(toy, work):
    """Every stage, in order, into ``work``."""
    for name in STAGES:
        run_stage(name, toy, work, work)
    return work
