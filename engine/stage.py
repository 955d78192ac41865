"""What every stage script shares: common flags, the run directory, logging, errors, AMP."""
import argparse
import contextlib
import functools
import logging
import os
import signal
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.sources import DATASETS
from net.fold import fold_batchnorm
from tools import dist, flags, provenance, recipes
from tools.io import PipelineError, make_dir, remove_stale_temporaries, write_json
from tools.workers import die_with_parent

log = logging.getLogger("wsss")


def add_dataset_args(parser, split_default="train"):
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", choices=DATASETS, default="voc",
                       help="dataset kind: voc (VOC 2012), coco (COCO 2014) or custom (VOC layout + class_names.txt)")
    group.add_argument("--data-root", required=True,
                       help="dataset folder: VOCdevkit/VOC2012, the COCO 2014 root, or a custom / toy folder")
    group.add_argument("--split", default=split_default, help="image list (train, val, train_aug, ...)")


def add_runtime_args(parser):
    group = parser.add_argument_group("runtime")
    group.add_argument("--work-dir", required=True, help="run directory that holds everything this run writes")
    group.add_argument("--device", type=flags.device, choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto: CUDA when present (one GPU per torchrun process), else the CPU")
    group.add_argument("--num-workers", type=flags.non_negative_int, default=dist.cpus_per_process(limit=8),
                       help="data-loading processes; the default is this process's share of the CPUs, at most 8")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                       help="channels-last memory format: the same numbers, faster convolutions (default: on with "
                            "CUDA, off on the CPU)")
    group.add_argument("--amp", action="store_true",
                       help="mixed precision: bf16 (fp16 on GPUs without bf16); fast on GPUs and on CPUs with AMX. "
                            "Off by default: the maps move under it (docs/performance.md, Precision)")


class LogFile(logging.FileHandler):
    """A log file whose write errors (a full disk) stop the stage with a one-line
    PipelineError, where logging would print a traceback and go on."""

    def handleError(self, record):
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            raise PipelineError(f"{self.baseFilename}: cannot write ({exc.strerror or exc})") from exc
        super().handleError(record)


def save_flags(args, stage, is_main=True):
    """``args/<stage>.json`` of the run directory: the stage's flags, saved again when a
    default was resolved later (from the method the CAM files record)."""
    if is_main:
        write_json(Path(args.work_dir) / "args" / f"{stage}.json", {k: v for k, v in sorted(vars(args).items())})


def prepare_run(args, stage, is_main=True):
    """Create the run directory, save the flags as JSON and log to ``logs/<stage>.log``."""
    work_dir = make_dir(args.work_dir)
    save_flags(args, stage, is_main)
    make_dir(work_dir / "logs")
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.handlers.clear()
    formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [LogFile(work_dir / "logs" / f"{stage}.log")] if is_main else []
    handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.propagate = False
    return work_dir


def resolve_formats(args, device):
    """``--channels-last`` not given: on with CUDA (the same numbers, faster convolutions:
    docs/performance.md, Precision), off on the CPU.  ``--amp`` stays as given: it moves the maps."""
    if getattr(args, "channels_last", False) is None:
        args.channels_last = device.type == "cuda"


@contextlib.contextmanager
def opened(args, name, device=None, seed=None):
    """Every stage's opening and ending in one place (docs/method.md §2): the process group and this
    process's device (``device``, default ``args.device``) and the formats that depend on it
    (``--channels-last``: on with CUDA unless given), the run directory with the flags
    and ``logs/<name>.log``, the seed when given; at the end every process waits for the
    others, and the process group is shut down, on error too.  Yields (info, work_dir)."""
    info = dist.init_distributed(device or args.device)
    resolve_formats(args, info.device)
    try:
        work_dir = prepare_run(args, name, info.is_main)
        if seed is not None:
            torch.manual_seed(seed)
        yield info, work_dir
        dist.barrier(info)
    finally:
        dist.shutdown(info)


def add_overwrite_arg(parser):
    parser.add_argument("--overwrite", action="store_true",
                        help="make every output again; without it, outputs that another network or other flags "
                             "made stop the stage (their made_by.json says what made them)")


def claim_outputs(folders, record, info, overwrite, suffix):
    """Create an inference stage's output folders and tie them to ``record`` (docs/method.md §2,
    tools/provenance.py): outputs of another record stop the stage unless ``overwrite``, and
    then they are removed; the main process removes the temporary files a killed run left,
    and writes the record before any output."""
    removals = [provenance.outputs_to_remove(make_dir(folder), record, suffix, overwrite) for folder in folders]
    dist.barrier(info)  # every process has looked before the main one changes anything
    if info.is_main:
        for folder, remove in zip(folders, removals):
            remove_stale_temporaries(folder)
            if remove:
                log.info("%s: removing its %s files (--overwrite)", folder, suffix)
                for path in provenance.output_files(folder, suffix):
                    path.unlink(missing_ok=True)
            write_json(Path(folder) / provenance.RECORD_NAME, record)
    dist.barrier(info)


def data_inputs(source, split, info, work_dir, labels=True):
    """``tools.provenance.data_inputs`` of ``split``, the image digests kept in the run
    directory's ``cache/image_digests.json``: the main process hashes what is new first,
    the others then read its digests."""
    path = Path(work_dir) / "cache" / "image_digests.json"
    inputs = None
    if info.is_main:
        digests = provenance.ImageDigests(path)
        inputs = provenance.data_inputs(source, split, digests, labels)
        problem = digests.save()
        if problem:
            log.warning("%s; the image digests are computed again by the next stage", problem)
    dist.barrier(info)
    return inputs or provenance.data_inputs(source, split, provenance.ImageDigests(path), labels)


def check_data(record, where, source, info, work_dir):
    """An upstream output (its provenance ``record``) read with the data it was made from:
    images, labels or class list changed since are a PipelineError naming what changed."""
    split = (record or {}).get("data_split")
    if split is None:
        return
    current = data_inputs(source, split, info, work_dir, labels="labels" in record["inputs"])
    changed = provenance.changed_data(record, current)
    if changed:
        raise PipelineError(f"{where}: made from other data than {source.root} holds now (differs in "
                            f"{', '.join(changed)} of {split}); make it again (its stage with --overwrite)")


def upstream_folder(folder, what, source, info, work_dir):
    """``tools.provenance.folder_input`` of an upstream output folder, after ``check_data``."""
    check_data(provenance.read_record(folder), folder, source, info, work_dir)
    return provenance.folder_input(folder, what)


def check_class_names(checkpoint, path, source):
    """A checkpoint that records the class list it was trained with has the dataset's list
    now: a list edited since (classes swapped, renamed) is a PipelineError, not maps under
    the wrong names."""
    made = checkpoint.get("made_from", {}).get("inputs", {}).get("class_names")
    if made and made != provenance.digest(list(source.class_names)):
        raise PipelineError(f"{path}: trained with another class list than the dataset's now "
                            f"({', '.join(source.class_names[1:])}), so its channels would carry other names; "
                            "restore the list the network was trained with, or train again with --overwrite")


def images_to_do(names, info, outputs):
    """This process's share of ``names`` whose outputs (``outputs(name)``: paths) are not all
    complete.  Split by rank first, then skipped: the shares do not depend on when each
    process looks at the folders."""
    return [name for name in dist.shard(names, info) if not all(p.exists() for p in outputs(name))]


def loader(dataset, info, num_workers, **kwargs):
    """A DataLoader whose workers die with this process (``tools.workers.die_with_parent``),
    pinning memory for a GPU."""
    return DataLoader(dataset, num_workers=num_workers, pin_memory=info.device.type == "cuda",
                      worker_init_fn=functools.partial(die_with_parent, os.getpid()), **kwargs)


def progress(iterable, is_main=True, **kwargs):
    """A tqdm progress bar on the main process only."""
    return tqdm(iterable, disable=not is_main, dynamic_ncols=True, **kwargs)


def channels_last(model, enabled):
    """``model`` in channels-last memory format when ``enabled`` (``--channels-last``)."""
    return model.to(memory_format=torch.channels_last) if enabled else model


def inference_model(model, device, channels_last_format):
    """An inference stage's network on ``device``: eval mode, BatchNorm folded into the
    convolutions (``net.fold``), channels-last when asked."""
    return channels_last(fold_batchnorm(model.to(device).eval()), channels_last_format)


def amp_dtype(device, enabled):
    """The mixed-precision type when ``enabled``, else None: bf16, or fp16 on a GPU
    without bf16."""
    if not enabled:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device, enabled):
    """Mixed precision on ``device`` when ``enabled`` (``amp_dtype``); else a no-op."""
    dtype = amp_dtype(device, enabled)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(device, enabled):
    """Loss scaling, on only for fp16 (bf16 needs none)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device, enabled) == torch.float16)


def error_line(exc):
    """The one-line message of a PipelineError, also when a DataLoader worker raised it:
    torch re-raises it in the main process with the worker's whole traceback as its
    message, whose last line is ``tools.io.PipelineError: <the original message>``."""
    text = str(exc)
    prefix = f"{PipelineError.__module__}.{PipelineError.__qualname__}: "
    if text.startswith("Caught PipelineError") and text.rstrip().splitlines()[-1].startswith(prefix):
        return text.rstrip().splitlines()[-1][len(prefix):]
    return text


# SIGTERM: a time limit, a container's stop, a scheduler's preemption; SIGUSR1: SLURM's warning before a
# requeue (sbatch --signal=USR1@SECONDS)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Stopped(BaseException):
    """A stop signal ended the stage (``handling_stop_signals``): ``resume`` says how a rerun
    goes on.  A BaseException, as KeyboardInterrupt: no ``except Exception`` catches it, so
    every atomic writer on the way out removes its temporary file."""

    def __init__(self, signum, resume="run the same command again: it does what is not done yet"):
        super().__init__(signum, resume)
        self.signum, self.resume = signum, resume


class StopSignals:
    """What the stop signals do in this process: raise ``Stopped`` at once (an inference
    stage: every finished output is whole, the one being written is dropped), or, inside
    ``deferred()``, only be noted until ``pending()`` is asked (a training stage, between
    two steps, so that the weights it saves are those of a finished step)."""

    def __init__(self):
        self.deferring, self.signum = False, None

    def handle(self, signum, _frame):
        if not self.deferring:
            raise Stopped(signum)
        self.signum = signum

    @contextlib.contextmanager
    def deferred(self):
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    def pending(self):
        """The stop signal noted so far, or None."""
        return self.signum


stop_signals = StopSignals()


@contextlib.contextmanager
def handling_stop_signals():
    """SIGTERM and SIGUSR1 become ``Stopped`` in this process (``StopSignals``) until the end
    of the block, when their handlers are those of before again."""
    stop_signals.signum = None
    before = {signum: signal.signal(signum, stop_signals.handle) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def run_stage(main, argv=None):
    """Run a stage's ``main``; a PipelineError becomes one line on stderr and exit status 2, a
    stop signal (``STOP_SIGNALS``) one line saying that a rerun resumes and status 128 + its number."""
    try:
        with handling_stop_signals():
            main(argv)
    except PipelineError as exc:
        for bar in list(tqdm._instances):  # end progress lines so the error stands on its own line
            bar.close()
        print(f"error: {error_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except Stopped as stop:
        for bar in list(tqdm._instances):
            bar.close()
        print(f"stopped by {signal.Signals(stop.signum).name}; every output written is whole; to resume, "
              f"{stop.resume}", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def recipe_defaults(parser, argv, stage):
    """Add ``--recipe`` and make the defaults of ``parser`` the settings of ``stage`` in the
    recipe it names, for the value of the stage's chooser flag in ``argv`` (``tools.recipes``),
    so that ``--help`` shows the chosen recipe's values."""
    parser.add_argument("--recipe", choices=recipes.RECIPE_NAMES, default="published",
                        help="published: the papers' settings; toy: the toy run's CPU sizes over them "
                             "(tools/recipes.py; docs/stages.md, Recipes)")
    chooser = argparse.ArgumentParser(add_help=False)
    chooser.add_argument("--recipe", choices=recipes.RECIPE_NAMES, default="published")
    flag = recipes.CHOOSERS.get(stage)
    if flag:  # the stage's own flag gives the default, so that the two cannot differ
        default = next(action.default for action in parser._actions if flag in action.option_strings)
        chooser.add_argument(flag, choices=tuple(recipes.PUBLISHED[stage]), default=default)
    chosen = vars(chooser.parse_known_args(argv)[0])
    choice = chosen[flag.lstrip("-").replace("-", "_")] if flag else ""
    settings = recipes.recipe(stage, chosen["recipe"], choice)
    unknown = set(settings) - {action.dest for action in parser._actions}
    if unknown:  # set_defaults would add them to the namespace, unread
        raise ValueError(f"tools/recipes.py: {stage} has no flags for {sorted(unknown)}")
    parser.set_defaults(**settings)
    shown = f"--recipe {chosen['recipe']}" + (f" {flag} {choice}" if flag else "")
    parser.epilog = f"The defaults shown are those of {shown}; give another with --help to see its values."


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after a flag's help, but only where it says something: not
    when the help states its default itself, and not for a default of None or False (a flag
    whose value comes from elsewhere, or a switch that is off)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser_for(description):
    return argparse.ArgumentParser(description=description, formatter_class=DefaultsHelpFormatter)
