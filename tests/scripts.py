"""Running the stage scripts as a user would, from the tests."""
import contextlib
import importlib
import io
import multiprocessing
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(script, *args, check=True, preexec_fn=None, timeout=600, env=None, process=False):
    """``python SCRIPT ARGS`` in the repository, as a user runs it; fails the test on a
    non-zero exit when ``check``.  The stage runs in this process (``in_process``) unless the
    process itself is under test: a ``preexec_fn`` (resource limits), an ``env`` (variables
    added to the environment) or ``process=True`` start a new interpreter."""
    if preexec_fn is None and env is None and not process:
        result = in_process(script, *args)
    else:
        result = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, capture_output=True,
                                text=True, timeout=timeout, preexec_fn=preexec_fn, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def in_process(script, *args):
    """A stage script's ``main`` inside ``engine.stage.run_stage``, as its ``__main__`` runs
    it, in this process: the exit status, standard output and error (an exception that
    escapes is printed as Python prints it, exit status 1) as ``subprocess.run`` returns
    them, without the 2-4 s of a new interpreter importing torch."""
    from engine import stage

    module = importlib.import_module(Path(script).stem)
    argv = [str(arg) for arg in args]
    children = set(multiprocessing.active_children())
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    sys.argv = [str(REPO / script), *argv]  # argparse's program name
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                stage.run_stage(module.main, argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
            except Exception:  # what the interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        # as the interpreter's exit does: daemonic children left running are ended (DataLoader
        # workers held by an error's traceback would wait 5 s each to stop when it is collected)
        for child in set(multiprocessing.active_children()) - children:
            if child.daemon:
                child.terminate()
                child.join()
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        for handler in stage.log.handlers:  # the stage's log file and its stream on the captured stderr
            handler.close()
        stage.log.handlers.clear()
    return subprocess.CompletedProcess([sys.executable, script, *argv], code, out.getvalue(), err.getvalue())


def assert_error(result, path, problem):
    """Exit status 2 and, as the last line on stderr, ``error: <path>: ...<problem>...``."""
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: {re.escape(str(path))}: .*{problem}.*", last), last
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr, result.stderr[-3000:]


# A tiny toy run through a driver: 8 images of 64 px, one epoch or two steps a network; the
# CRFs and the scoring in this process (the pools start interpreters: tests/test_workers.py)
TINY = ["--toy-images", "8", "--toy-image-size", "64",
        "--train-cam", "--epochs 1 --crop-size 64 --resize-long 48 64 --batch-size 4 --num-workers 0",
        "--make-cam", "--scales 1.0 --num-workers 0",
        "--eval-cam", "--score-workers 0",
        "--make-affinity-labels", "--crf-workers 0",
        "--train-affinity", "--epochs 1 --crop-size 80 --batch-size 4 --num-workers 0",
        "--make-seg-labels", "--crf-workers 0",
        "--train-seg", "--iterations 2 --crop-size 64 --batch-size 4 --num-workers 0",
        "--infer-seg", "--scales 1.0 --num-workers 0 --crf-workers 0"]


def drive(script, work_dir, *args):
    """``bash SCRIPT --toy --work-dir WORK_DIR`` with TINY and ``args`` (this interpreter's
    folder first on PATH); fails the test on a non-zero exit, returns the stages' output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(REPO / script), "--toy", "--work-dir", str(work_dir), *TINY, *args],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout + result.stderr  # the stage lines and the stages' logs


def labelled_share(root, label_dir, split="train"):
    """Percentage of the ground-truth pixels (not 255) of a custom dataset's split that the
    label PNGs in ``label_dir`` assign (not 255): eval_cam's coverage, computed directly."""
    from data.sources import build_source
    from tools.io import read_label_png

    source = build_source("custom", root)
    labelled = scored = 0
    for name in source.ids(split):
        gt, labels = read_label_png(source.mask_path(name)), read_label_png(Path(label_dir) / f"{name}.png")
        labelled += int(((gt != 255) & (labels != 255)).sum())
        scored += int((gt != 255).sum())
    return 100 * labelled / scored
