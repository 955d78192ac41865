"""The training loop shared by the training stages: flags, sample order, schedule,
resume (docs/method.md §2, §5.8, §9, §11)."""
import argparse
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from engine import stage
from engine.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from tools import dist, flags, provenance
from tools.io import PipelineError, remove_stale_temporaries

log = stage.log


def epoch_batches(num_samples, batch_size, seed, epoch, rank=0, world_size=1):
    """The batches of one epoch for this rank: a permutation fixed by (seed, epoch), last
    incomplete batch dropped, each global batch split evenly between the ranks.

    Depends on nothing else, so a resumed run sees the same batches as an unbroken one.
    """
    if batch_size % world_size:
        raise PipelineError(f"--batch-size {batch_size} is not divisible by the {world_size} processes")
    if num_samples < batch_size:
        raise PipelineError(f"the split has {num_samples} images, fewer than one batch of {batch_size}")
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 1000003 + epoch)).tolist()
    per_rank = batch_size // world_size
    return [order[start + rank * per_rank:start + (rank + 1) * per_rank]
            for start in range(0, num_samples - batch_size + 1, batch_size)]


def poly_lr(base_lr, step, max_step, power=0.9):
    """``base_lr * (1 - step / max_step) ** power`` (docs/method.md §5.8)."""
    return base_lr * (1 - step / max_step) ** power


class PolySchedule:
    """The poly schedule of docs/method.md §5.8 / §9 / §13 over ``max_step`` steps: before each step every
    group's lr is its lr at construction times ``(1 - step / max_step) ** power``.  A function
    of the step alone, so a resumed run goes on with it."""

    def __init__(self, optimizer, max_step, power=0.9):
        self.optimizer, self.max_step, self.power = optimizer, max_step, power
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]

    def set_step(self, step):
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = poly_lr(base, step, self.max_step, self.power)


def epoch_steps(dataset, batch_size, epochs):
    """The steps of ``epochs`` passes over ``dataset`` in batches of ``batch_size`` (the
    last incomplete batch of each pass dropped, as ``epoch_batches`` does)."""
    return len(dataset) // batch_size * epochs


def unwrap(model):
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def add_training_args(parser, steps="epochs"):
    """The flags every training stage has; their values come from the stage's recipe
    (``engine.stage.recipe_defaults``, tools/recipes.py).  ``steps``: ``epochs`` (passes over
    the split) or ``iterations`` (a stage that counts its schedule in steps)."""
    parser.add_argument("--pretrained", default="imagenet",
                        help="the backbone's initial weights: imagenet (torch hub cache, offline), none (random), a "
                             "ResNet file, or a checkpoint of this pipeline (its backbone)")
    parser.add_argument("--batch-size", type=flags.positive_int, help="images per step over all processes")
    if steps == "epochs":
        parser.add_argument("--epochs", type=flags.positive_int, help="passes over the split")
    else:
        parser.add_argument("--iterations", type=flags.positive_int, help="training steps")
    parser.add_argument("--lr", type=flags.positive_float,
                        help="backbone learning rate (poly schedule, power 0.9)")
    parser.add_argument("--new-layer-lr-mult", type=flags.positive_float, help="learning-rate factor of the new layers")
    parser.add_argument("--weight-decay", type=flags.non_negative_float, help="SGD weight decay")
    parser.add_argument("--momentum", type=flags.fraction, help="SGD momentum")
    parser.add_argument("--clip-grad", type=flags.non_negative_float, help="gradient norm clip (0: off)")
    parser.add_argument("--crop-size", type=flags.crop_size,
                        help=f"square training crop (pixels, at least {flags.MIN_CROP_SIZE})")
    parser.add_argument("--seed", type=flags.non_negative_int, default=0,
                        help="sample order, augmentation and initialisation")
    parser.add_argument("--save-every", type=flags.positive_int, default=200,
                        help="steps between resumable checkpoints")
    parser.add_argument("--log-every", type=flags.positive_int, default=20, help="steps between loss log lines")
    parser.add_argument("--resume", action="store_true", help="continue from the *_last.pth checkpoint")
    parser.add_argument("--stop-at-step", type=flags.non_negative_int, default=0,
                        help="stop with a resumable checkpoint after this many steps (for job time limits; 0: never)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train again from step 0, over a finished or a resumable run")


def add_frozen_arg(parser):
    """``--frozen``: what the published recipe freezes, whatever the initial weights (docs/method.md §4)."""
    parser.add_argument("--frozen", action=argparse.BooleanOptionalAction,
                        help="freeze what the published recipe freezes (the stem, layer1 and layer2 of the CAM "
                             "classifiers, AffinityNet's stem and BatchNorm, IRN's whole backbone, DeepLab-v2's "
                             "BatchNorm), BatchNorm keeping its statistics; recorded in the checkpoint. --no-frozen "
                             "trains every layer and BatchNorm (from random weights, which have nothing to keep; "
                             "not for IRN, whose backbone the method keeps)")


def check_frozen(parser, args):
    """Random weights have no statistics to keep nor features to freeze: ``--pretrained
    none`` needs ``--no-frozen`` (IRN, always frozen, is the caller's exception)."""
    if args.frozen and args.pretrained == "none":
        parser.error("--pretrained none trains from random weights, whose BatchNorm statistics and stem --frozen "
                     "would keep as they are: add --no-frozen")


def add_augmentation_args(parser):
    """The augmentation flags of train_cam and train_affinity (docs/method.md §3, §5.10, §9), off by
    default: each stage's recipe (tools/recipes.py) sets them."""
    parser.add_argument("--resize-long", type=flags.positive_int, nargs=2, metavar=("MIN", "MAX"),
                        action=flags.OrderedPair,
                        help="resize the image so that its long side is uniform in this range (None: as it is)")
    parser.add_argument("--color-jitter", type=flags.non_negative_float, nargs=4, action=flags.ColorJitterStrengths,
                        metavar=("BRIGHTNESS", "CONTRAST", "SATURATION", "HUE"),
                        help="random colour changes of the image (never of its labels), as torchvision's "
                             "ColorJitter (None: off)")


def build_optimizer(model, lr, new_layer_lr_mult=1.0, weight_decay=0.0, momentum=0.0):
    """SGD over the model's parameter groups (``net.parameters``): ``lr``, times
    ``new_layer_lr_mult`` for new layers and times 2 for PSA's biases, which get no weight
    decay (docs/method.md §5.8, §9, §13); empty groups are left out."""
    groups = []
    for group in model.param_groups():
        if not group["params"]:
            continue
        group_lr = lr * (new_layer_lr_mult if group["new"] else 1.0) * (2.0 if group["bias"] else 1.0)
        groups.append({"params": group["params"], "lr": group_lr,
                       "weight_decay": 0.0 if group["bias"] else weight_decay})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def claim_run(work_dir, name, record, overwrite, is_main):
    """The overwrite policy (docs/method.md §2): a run directory that holds a finished ``name`` network
    made from the same inputs and flags (``record``) is done; one made otherwise is trained
    over only with ``--overwrite``, and then the old network is removed at once, so that it
    cannot outlive a run that stops before its end.  Returns the paths of the final and the
    resumable checkpoints, or None when the network is done."""
    final_path, last_path = work_dir / "ckpt" / f"{name}.pth", work_dir / "ckpt" / f"{name}_last.pth"
    if final_path.exists() and not overwrite:
        made_from, what = None, "that records nothing of what made it"
        try:
            made_from = load_checkpoint(final_path).get("made_from")
        except PipelineError as exc:
            what = f"that cannot be read ({exc})"
        if made_from and made_from["digest"] == record["digest"]:
            return None
        if made_from:
            what = f"made from other inputs or flags (differs in {provenance.differences(made_from, record)})"
        raise PipelineError(f"{final_path}: this run directory already holds a finished {name} network {what}; "
                            "pass --overwrite to train again")
    if is_main:
        remove_stale_temporaries(final_path.parent, (final_path.stem, last_path.stem))
        final_path.unlink(missing_ok=True)
    return final_path, last_path


class LossWindow:
    """The losses of the steps since the last log line, summed on the device (no host
    synchronisation per step) and reported as their means, with images per second and,
    on a GPU, the peak memory (as torchvision's MetricLogger smooths its meters)."""

    def __init__(self, device):
        self.device = device
        self.start()

    def start(self):
        self.sums, self.steps, self.started = {}, 0, time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def add(self, losses):
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0) + value.detach().float()
        self.steps += 1

    def report(self, images_per_step):
        """``name mean ...  N img/s [peak M GiB]`` of the window; starts the next one."""
        parts = [f"{key} {value.item() / self.steps:.4f}" for key, value in self.sums.items()]
        parts.append(f"{self.steps * images_per_step / max(time.perf_counter() - self.started, 1e-9):.2f} img/s")
        if self.device.type == "cuda":
            parts.append(f"peak {torch.cuda.max_memory_allocated(self.device) / 2**30:.2f} GiB")
        self.start()
        return " ".join(parts)


class Trainer:
    """The training loop of docs/method.md §5.8 / §9 / §13 in parts: the checkpoint (save, resume), the
    NaN guard, one pass over the split.  Batches, schedule and augmentation depend only on
    the seed and the step, so a resumed run ends with the weights an unbroken run would
    have; the loss scaler's state is saved too, so an fp16 resume is exact."""

    def __init__(self, model, dataset, loss_fn, optimizer, schedule, clip_grad, args, info, paths, meta):
        self.dataset, self.loss_fn, self.args, self.info, self.meta = dataset, loss_fn, args, info, meta
        self.optimizer, self.schedule, self.clip_grad = optimizer, schedule, clip_grad
        self.final_path, self.last_path = paths
        self.model = prepare_model(model, info.device, args.channels_last)  # the optimizer's parameters stay
        self.scaler = stage.grad_scaler(info.device, args.amp)
        self.steps_per_epoch = epoch_steps(dataset, args.batch_size, epochs=1)
        if self.steps_per_epoch == 0:
            raise PipelineError(f"the split has {len(dataset)} images, fewer than one batch of {args.batch_size}")
        self.max_step = schedule.max_step
        self.step = 0

    def resume(self):
        """Continue from the resumable checkpoint: weights, optimizer, loss scaler, RNG, step;
        one made from other inputs or flags is an error."""
        record = self.meta["made_from"]
        state = load_checkpoint(self.last_path, {k: v for k, v in self.meta.items() if k != "made_from"})
        made_from = state.get("made_from")
        if not made_from or made_from["digest"] != record["digest"]:
            differs = provenance.differences(made_from, record) if made_from else "it records nothing of what made it"
            raise PipelineError(f"{self.last_path}: made from other inputs or flags than this run ({differs}); "
                                "pass --overwrite to train from step 0")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.step = state["step"]
        log.info("resumed from %s at step %d", self.last_path, self.step)

    def diverged(self, what):
        last = self.last_path
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was saved"
        return PipelineError(f"{what} at step {self.step}; {kept} (lower --lr, or check the data)")

    def save(self, path, with_optimizer):
        """Write a checkpoint (the main process); non-finite weights are never saved."""
        state = self.model.state_dict()  # the unwrapped module: DDP wraps it only in run()
        if not torch.stack([torch.isfinite(w).all() for w in state.values() if w.is_floating_point()]).all():
            raise self.diverged("the weights became non-finite")
        if self.info.is_main:
            payload = {**self.meta, "model": state, "step": self.step}
            if with_optimizer:
                payload.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                               rng=rng_state())
            save_checkpoint(path, payload)

    def run_pass(self, train_model, bar, window):
        """The rest of the current pass over the split (up to the end of the schedule);
        returns False when ``--stop-at-step`` stopped it."""
        args, info = self.args, self.info
        epoch, skip = divmod(self.step, self.steps_per_epoch)
        self.dataset.set_epoch(epoch)
        batches = epoch_batches(len(self.dataset), args.batch_size, args.seed, epoch, info.rank, info.world_size)
        loader = stage.loader(self.dataset, info, args.num_workers,
                              batch_sampler=batches[skip:skip + self.max_step - self.step])
        for batch in loader:
            self.schedule.set_step(self.step)
            batch = to_device(batch, info.device, args.channels_last)
            losses, loss = train_step(train_model, batch, self.loss_fn, self.optimizer, self.scaler, self.clip_grad,
                                      args.amp)
            window.add(losses)
            self.step += 1
            bar.update(1)
            logging_step = self.step % args.log_every == 0 or self.step == self.max_step
            saving_step = self.step % args.save_every == 0 or self.step == args.stop_at_step
            if (logging_step or saving_step) and not torch.isfinite(loss).item():
                raise self.diverged(f"the loss became {loss.item()}")
            if logging_step:
                log.info("step %d/%d %s lr %.4g", self.step, self.max_step, window.report(args.batch_size),
                         self.optimizer.param_groups[0]["lr"])
            if saving_step:
                self.save(self.last_path, with_optimizer=True)
            if self.step == args.stop_at_step:
                log.info("stopped at step %d; continue with --resume", self.step)
                return False
            self.stop_if_signalled(saved=saving_step)
        return True

    def stop_if_signalled(self, saved):
        """After a step: a stop signal seen (by any process) saves the resumable checkpoint
        of this step, unless ``saved`` already, and raises ``engine.stage.Stopped``."""
        signum = stage.stop_signals.pending() or 0
        if self.info.distributed:  # every process stops after the same step
            flag = torch.tensor([signum], device=self.info.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
        if not signum:
            return
        if not saved:
            self.save(self.last_path, with_optimizer=True)
        log.info("stop signal: saved step %d to %s", self.step, self.last_path)
        raise stage.Stopped(signum, f"run the same command with --resume: it goes on from step {self.step} "
                                    f"({self.last_path})")

    def run(self, name):
        train_model = DistributedDataParallel(self.model) if self.info.distributed else self.model
        train_model.train()
        log.info("%s on %s: %d images, %d steps of %d", name, self.info.device, len(self.dataset), self.max_step,
                 self.args.batch_size)
        bar = stage.progress(range(self.max_step), self.info.is_main, initial=self.step, desc=f"train {name}")
        window = LossWindow(self.info.device)
        with bar, stage.stop_signals.deferred():  # a stop signal ends the run after a whole step
            while self.step < self.max_step:
                if not self.run_pass(train_model, bar, window):
                    return
        self.save(self.last_path, with_optimizer=True)
        self.save(self.final_path, with_optimizer=False)
        log.info("saved %s", self.final_path)
        dist.barrier(self.info)


def train(model, dataset, loss_fn, optimizer, schedule, args, info, work_dir, name, meta, label_dir=None,
          clip_grad=0.0, data=None):
    """Train ``model`` on ``dataset`` and write ``ckpt/<name>.pth`` and ``ckpt/<name>_last.pth``.

    ``loss_fn(model, batch)`` returns a dict of named scalar losses whose sum is minimised by
    ``optimizer`` (its parameters the model's), its lrs set by ``schedule`` before each step
    (``PolySchedule``: its ``max_step`` is the run's length), the gradient norm clipped at
    ``clip_grad`` (0: not); ``args`` holds the loop's plumbing (batch size, seed, loader
    workers, formats, log and save intervals, resume).
    ``meta`` (architecture, number of classes...) goes into both checkpoints and must
    match on ``--resume``, with the record of what the network is made from (docs/method.md §2,
    tools/provenance.py): the ``--pretrained`` weights, the label maps of ``label_dir`` (made
    from the data there is now: ``engine.stage.check_data``), the data (``data``: the
    ``engine.stage.data_inputs`` of ``args.split``) and the flags.  A finished network of the
    same record is left as it is.
    """
    pretrained, checkpoints = provenance.weights_input(args.pretrained)
    inputs = {"pretrained": pretrained, **(data or {})}
    if label_dir is not None:
        inputs["label_maps"], made_labels, _ = stage.upstream_folder(label_dir, "labels", dataset.source, info,
                                                                     work_dir)
        checkpoints += made_labels
    record = provenance.make_record(name, inputs, provenance.settings(args, keep=("split",)), checkpoints,
                                    data_split=args.split if data else None)
    paths = claim_run(work_dir, name, record, args.overwrite, info.is_main)
    if paths is None:
        log.info("%s: trained from these inputs and flags already; nothing to do", work_dir / "ckpt" / f"{name}.pth")
        return
    trainer = Trainer(model, dataset, loss_fn, optimizer, schedule, clip_grad, args, info, paths,
                      {**meta, "made_from": record})
    if args.resume and trainer.last_path.exists() and not args.overwrite:
        trainer.resume()
    trainer.run(name)


def prepare_model(model, device, channels_last):
    """The model in channels-last format on request; on CUDA, cuDNN picks its fastest
    kernels for the fixed training crop size (autotuning)."""
    torch.backends.cudnn.benchmark = device.type == "cuda"
    return stage.channels_last(model, channels_last)


def train_step(model, batch, loss_fn, optimizer, scaler, clip_grad, amp):
    """One optimisation step with no host synchronisation; returns (named losses, total)."""
    device = next(model.parameters()).device
    with stage.autocast(device, amp):
        losses = loss_fn(model, batch)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    return losses, loss


def to_device(batch, device, channels_last=False):
    """Move the tensors of a batch dict to ``device`` (images channels-last on request)."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and key == "image":
                value = value.contiguous(memory_format=torch.channels_last)
        moved[key] = value
    return moved
