"""Stage 1: train the SIPE / AE-SIPE classifier (SPEC 5, 6) -> ckpt/cam.pth."""
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from data.datasets import ClassificationDataset, build_source
from data.transforms import TrainTransform
from net.sipe import METHODS, SIPENet
from tools import dist, stage
from tools.io import PipelineError
from tools.train import (epoch_batches, load_checkpoint, restore_rng_state, rng_state, save_checkpoint,
                         set_poly_lr, unwrap)

log = stage.log


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="train_aug")
    stage.add_runtime_args(parser)
    parser.add_argument("--method", choices=METHODS, default="sipe", help="sipe, or ae_sipe (PAMR-refined seeds)")
    parser.add_argument("--pretrained", default="imagenet",
                        help="backbone weights: imagenet (torch hub cache, offline), none, or a file path")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step over all processes")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.1, help="backbone learning rate")
    parser.add_argument("--new-layer-lr-mult", type=float, default=10.0, help="learning-rate factor of the new layers")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--clip-grad", type=float, default=1.0, help="gradient norm clip (0 turns it off)")
    parser.add_argument("--crop-size", type=int, default=512)
    parser.add_argument("--resize-long", type=int, nargs=2, default=(320, 640), metavar=("MIN", "MAX"),
                        help="range of the random long-side resize")
    parser.add_argument("--bg-scale", type=float, default=0.5, help="background IoU factor of the structure seeds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format (GPU)")
    parser.add_argument("--save-every", type=int, default=200, help="steps between resumable checkpoints")
    parser.add_argument("--log-every", type=int, default=20, help="steps between loss log lines")
    parser.add_argument("--resume", action="store_true", help="continue from ckpt/cam_last.pth")
    parser.add_argument("--stop-at-step", type=int, default=0,
                        help="stop with a resumable checkpoint after this many steps (for job time limits)")
    parser.add_argument("--overwrite", action="store_true", help="train again over a finished run")
    return parser.parse_args(argv)


def build_optimizer(model, args):
    backbone, new = model.param_groups()
    base_lrs = [args.lr, args.lr * args.new_layer_lr_mult]
    optimizer = torch.optim.SGD([{"params": backbone, "lr": base_lrs[0]}, {"params": new, "lr": base_lrs[1]}],
                                lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return optimizer, base_lrs


def main(argv=None):
    args = parse_args(argv)
    info = dist.init_distributed(args.device)
    work_dir = stage.prepare_run(args, "train_cam", info.is_main)
    final_path, last_path = work_dir / "ckpt" / "cam.pth", work_dir / "ckpt" / "cam_last.pth"
    if final_path.exists() and not args.overwrite:
        raise PipelineError(f"{final_path}: this run directory already holds a trained classifier "
                            "(pass --overwrite to train again)")
    torch.manual_seed(args.seed)

    source = build_source(args.dataset, args.data_root)
    source.check_split(args.split)
    dataset = ClassificationDataset(source, args.split, TrainTransform(tuple(args.resize_long), args.crop_size),
                                    seed=args.seed)
    model = SIPENet(source.num_classes, args.method, args.pretrained, args.bg_scale).to(info.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, base_lrs = build_optimizer(model, args)
    steps_per_epoch = len(dataset) // args.batch_size
    max_step = steps_per_epoch * args.epochs
    step = 0
    if args.resume and last_path.exists():
        state = load_checkpoint(last_path, {"kind": "cam", "method": args.method, "num_classes": source.num_classes})
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"])
        step = state["step"]
        log.info("resumed from %s at step %d", last_path, step)
    meta = {"kind": "cam", "method": args.method, "num_classes": source.num_classes,
            "class_names": source.class_names}
    train_model = DistributedDataParallel(model) if info.distributed else model
    train_model.train()
    scaler = stage.grad_scaler(info.device, args.amp)

    def save(path, with_optimizer):
        if info.is_main:
            payload = {**meta, "model": unwrap(train_model).state_dict(), "step": step}
            if with_optimizer:
                payload.update(optimizer=optimizer.state_dict(), rng=rng_state())
            save_checkpoint(path, payload)

    log.info("%s on %s: %d images, %d steps of %d", args.method, info.device, len(dataset), max_step,
             args.batch_size)
    bar = stage.progress(range(max_step), info.is_main, initial=step, desc="train_cam")
    started, start_step = time.time(), step
    while step < max_step:
        epoch, skip = divmod(step, steps_per_epoch)
        dataset.set_epoch(epoch)
        batches = epoch_batches(len(dataset), args.batch_size, args.seed, epoch, info.rank, info.world_size)
        loader = DataLoader(dataset, batch_sampler=batches[skip:], num_workers=args.num_workers,
                            pin_memory=info.device.type == "cuda")
        for batch in loader:
            set_poly_lr(optimizer, base_lrs, step, max_step)
            images = batch["image"].to(info.device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = batch["label"].to(info.device, non_blocking=True)
            valid = batch["valid"].to(info.device, non_blocking=True)
            with stage.autocast(info.device, args.amp):
                out = train_model(images, labels, valid)
            loss = out["cls_loss"] + out["gsc_loss"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(train_model.parameters(), args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            bar.update(1)
            logging_step = step % args.log_every == 0 or step == max_step
            saving_step = step % args.save_every == 0 or step == args.stop_at_step
            if (logging_step or saving_step) and not torch.isfinite(loss).item():
                raise PipelineError(f"loss became {loss.item()} at step {step}; the last good checkpoint "
                                    f"{last_path} is kept (lower --lr, or check the data)")
            if logging_step:
                log.info("step %d/%d cls %.4f gsc %.4f lr %.4g %.2f img/s", step, max_step,
                         out["cls_loss"].item(), out["gsc_loss"].item(), optimizer.param_groups[0]["lr"],
                         (step - start_step) * args.batch_size / max(time.time() - started, 1e-9))
            if saving_step:
                save(last_path, with_optimizer=True)
            if step == args.stop_at_step:
                log.info("stopped at step %d; continue with --resume", step)
                bar.close()
                dist.shutdown(info)
                return
    bar.close()
    save(last_path, with_optimizer=True)
    save(final_path, with_optimizer=False)
    log.info("saved %s", final_path)
    dist.barrier(info)
    dist.shutdown(info)


if __name__ == "__main__":
    stage.run_stage(main)
