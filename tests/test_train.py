"""The parts of the training loop (engine/train.py) on a tiny model, in process."""
import argparse

import pytest
import torch
from torch import nn

from engine import train as training
from engine.checkpoint import load_checkpoint
from net.parameters import layer_groups
from tools.dist import DistInfo
from tools.io import PipelineError

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(3, 4), nn.Linear(4, 1)

    def param_groups(self):
        return layer_groups([self.body], [self.head])

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


class Points(torch.utils.data.Dataset):
    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(8, 3, generator=gen), torch.randn(8, 1, generator=gen)

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {"image": self.x[index], "target": self.y[index]}


def squared_error(model, batch):
    return {"mse": ((model(batch["image"]) - batch["target"]) ** 2).mean()}


def flags(**changes):
    """A stage's flags as the loop and the provenance record read them (lr: the optimizer's)."""
    args = dict(lr=0.05, batch_size=2, channels_last=False, amp=False, seed=0, num_workers=0, log_every=1,
                save_every=1, stop_at_step=0, overwrite=False, resume=False, pretrained="none")
    return argparse.Namespace(**{**args, **changes})


@pytest.fixture
def scaled_fp16(monkeypatch):
    """An enabled loss scaler that doubles its scale after every step, as fp16 training has."""
    monkeypatch.setattr(training.stage, "grad_scaler",
                        lambda device, amp: torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1))


def run(work_dir, **changes):
    """Two epochs of SGD with momentum and the poly schedule (8 steps of 2 points)."""
    torch.manual_seed(0)
    args, model, points = flags(**changes), Tiny(), Points()
    optimizer = training.build_optimizer(model, args.lr, new_layer_lr_mult=2.0, momentum=0.9)
    schedule = training.PolySchedule(optimizer, training.epoch_steps(points, args.batch_size, epochs=2))
    training.train(model, points, squared_error, optimizer, schedule, args, CPU, work_dir, "tiny", {"kind": "tiny"})
    return load_checkpoint(work_dir / "ckpt" / "tiny_last.pth")


def test_the_optimizer_and_the_poly_schedule():
    """docs/method.md §5.8: the new layers at lr x the factor, decay off for PSA's biases only, and each
    group's lr at step s is its lr x (1 - s / max_step) ** 0.9."""
    model = Tiny()
    optimizer = training.build_optimizer(model, 0.1, new_layer_lr_mult=10.0, weight_decay=1e-4, momentum=0.5)
    assert [(g["lr"], g["weight_decay"], g["momentum"]) for g in optimizer.param_groups] == [
        (0.1, 1e-4, 0.5), (pytest.approx(1.0), 1e-4, 0.5)]
    schedule = training.PolySchedule(optimizer, max_step=10)
    schedule.set_step(4)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1 * 0.6 ** 0.9, 1.0 * 0.6 ** 0.9])
    schedule.set_step(0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 1.0])
    assert training.epoch_steps(Points(), batch_size=3, epochs=5) == 10  # 8 points: 2 whole batches a pass


def test_resume_restores_the_loss_scaler(tmp_path, scaled_fp16):
    unbroken = run(tmp_path / "a")
    assert unbroken["step"] == 8 and unbroken["scaler"]["scale"] == 1024.0 * 2 ** 8
    stopped = run(tmp_path / "b", stop_at_step=3)
    assert stopped["step"] == 3 and stopped["scaler"]["scale"] == 1024.0 * 2 ** 3
    resumed = run(tmp_path / "b", resume=True)
    assert resumed["scaler"] == unbroken["scaler"]
    assert all(torch.equal(unbroken["model"][key], resumed["model"][key]) for key in unbroken["model"])


def test_a_finished_run_of_the_same_flags_is_done_and_one_of_other_flags_is_kept_unless_overwritten(tmp_path):
    final = tmp_path / "ckpt" / "tiny.pth"
    first = run(tmp_path)
    made = final.stat().st_mtime_ns
    assert run(tmp_path)["step"] == first["step"] and final.stat().st_mtime_ns == made  # nothing to do
    with pytest.raises(PipelineError, match=r"already holds a finished tiny network made from other inputs or flags "
                                            r"\(differs in settings.lr: 0.05 -> 0.1\); pass --overwrite"):
        run(tmp_path, lr=0.1)
    assert final.stat().st_mtime_ns == made
    record = load_checkpoint(final)["made_from"]
    assert training.claim_run(tmp_path, "tiny", record, overwrite=True, is_main=True) == (
        final, final.with_stem("tiny_last"))
    assert not final.exists()  # removed at once: it cannot outlive a run that stops early


def test_a_resume_with_other_flags_is_refused_and_overwrite_starts_from_step_0(tmp_path):
    run(tmp_path, stop_at_step=3)
    with pytest.raises(PipelineError, match=r"tiny_last.pth: made from other inputs or flags than this run "
                                            r"\(settings.seed: 0 -> 1\); pass --overwrite"):
        run(tmp_path, resume=True, seed=1)
    assert run(tmp_path, resume=True, seed=1, overwrite=True)["step"] == 8
    assert load_checkpoint(tmp_path / "ckpt" / "tiny.pth")["made_from"]["settings"]["seed"] == 1


def test_loss_window_reports_means_since_the_last_report():
    window = training.LossWindow(torch.device("cpu"))
    window.add({"a": torch.tensor(1.0), "b": torch.tensor(4.0)})
    window.add({"a": torch.tensor(3.0), "b": torch.tensor(0.0)})
    first = window.report(images_per_step=2).split()
    assert first[:4] == ["a", "2.0000", "b", "2.0000"] and first[-1] == "img/s"
    window.add({"a": torch.tensor(5.0), "b": torch.tensor(1.0)})
    assert window.report(images_per_step=2).split()[:4] == ["a", "5.0000", "b", "1.0000"]
