"""Flag values checked when they are parsed (tools/flags.py), in process: a bad value is
argparse's ``error: argument --x: ...`` with exit status 2, before anything runs; and a run
or output directory that is a file is one line ``error: <path>: not a directory``."""
import re
import signal

import pytest
import torch

import eval_cam
import infer_seg
import make_affinity_labels
import make_cam
import make_seg_labels
import train_affinity
import train_cam
import train_seg
from bench import random_walk as bench_random_walk
from data import toy
from engine import stage

REQUIRED = ["--data-root", "data", "--work-dir", "run"]
TRAINING = [train_cam, train_affinity, train_seg]
# (stage module, its bad flag values, the flag argparse names); each training stage gets the
# shared training flags too
BAD = [
    *[(module, argv, argv[0]) for module in TRAINING for argv in (
        ["--batch-size", "-2"], ["--batch-size", "0"], ["--lr", "-0.1"], ["--lr", "nan"], ["--lr", "inf"],
        ["--new-layer-lr-mult", "0"], ["--weight-decay", "-1e-4"], ["--momentum", "1.5"], ["--clip-grad", "-1"],
        ["--crop-size", "1"], ["--crop-size", "31"], ["--crop-size", "64.5"], ["--seed", "-1"],
        ["--save-every", "0"], ["--log-every", "0"], ["--stop-at-step", "-1"], ["--num-workers", "-1"])],
    (train_cam, ["--epochs", "0"], "--epochs"),
    (train_affinity, ["--epochs", "-3"], "--epochs"),
    (train_seg, ["--iterations", "0"], "--iterations"),
    (train_cam, ["--seed-bg-scale", "0"], "--seed-bg-scale"),
    (train_cam, ["--resize-long", "640", "320"], "--resize-long"),
    (train_cam, ["--resize-long", "0", "320"], "--resize-long"),
    (train_cam, ["--color-jitter", "0.3", "-0.3", "0.3", "0.1"], "--color-jitter"),
    (train_cam, ["--color-jitter", "0.3", "0.3", "0.3", "0.6"], "--color-jitter"),
    (train_affinity, ["--radius", "0"], "--radius"),
    (train_affinity, ["--radius", "1"], "--radius"),
    (train_affinity, ["--scale-range", "1.5", "0.5"], "--scale-range"),
    (train_affinity, ["--resize-long", "512", "256"], "--resize-long"),
    (train_seg, ["--scale-range", "0", "1.5"], "--scale-range"),
    (make_cam, ["--scales", "0"], "--scales"),
    (make_cam, ["--scales", "1.0", "-1"], "--scales"),
    (make_cam, ["--visualize", "-1"], "--visualize"),
    (make_cam, ["--write-workers", "-1"], "--write-workers"),
    (make_cam, ["--num-workers", "two"], "--num-workers"),
    (eval_cam, ["--threshold", "1.5"], "--threshold"),
    (eval_cam, ["--bg-scale", "-1"], "--bg-scale"),
    (eval_cam, ["--score-workers", "-2"], "--score-workers"),
    (make_affinity_labels, ["--crf-workers", "-1"], "--crf-workers"),
    (make_affinity_labels, ["--bg-conf-scale", "0"], "--bg-conf-scale"),
    (make_affinity_labels, ["--low-alpha", "0"], "--low-alpha"),
    (make_affinity_labels, ["--high-alpha", "-32"], "--high-alpha"),
    (make_seg_labels, ["--steps", "-5"], "--steps"),
    (make_seg_labels, ["--steps", "0"], "--steps"),
    (make_seg_labels, ["--radius", "0"], "--radius"),
    (make_seg_labels, ["--beta", "0"], "--beta"),
    (make_seg_labels, ["--alpha", "-16"], "--alpha"),
    (make_seg_labels, ["--power", "0"], "--power"),
    (make_seg_labels, ["--bg-scale", "0"], "--bg-scale"),
    (make_seg_labels, ["--crf-workers", "-1"], "--crf-workers"),
    (make_seg_labels, ["--visualize", "-1"], "--visualize"),
    (infer_seg, ["--scales", "0.5", "0"], "--scales"),
    (infer_seg, ["--crf-workers", "-1"], "--crf-workers"),
    (infer_seg, ["--visualize", "-2"], "--visualize"),
]
# values at the edge of what each kind allows, parsed as given
EDGES = [
    (train_cam, ["--stop-at-step", "0", "--clip-grad", "0", "--momentum", "0", "--weight-decay", "0", "--seed", "0",
                 "--num-workers", "0", "--crop-size", "32", "--resize-long", "320", "320", "--color-jitter", "0", "0",
                 "0", "0.5"]),
    (train_affinity, ["--radius", "2", "--scale-range", "1", "1", "--momentum", "1"]),
    (make_cam, ["--visualize", "0", "--scales", "0.25"]),
    (eval_cam, ["--threshold", "0", "--score-workers", "0"]),
    (eval_cam, ["--threshold", "1"]),
    (make_seg_labels, ["--steps", "1", "--crf-workers", "0", "--radius", "2"]),
]


def parse_error(parse, argv, capsys):
    """The exit status and the last line on stderr of ``parse(argv)``, which must fail."""
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return exit_info.value.code, err.strip().splitlines()[-1]


@pytest.mark.parametrize("module, argv, flag", BAD,
                         ids=[f"{m.__name__}{' '.join(a)}" for m, a, _ in BAD])
def test_a_bad_flag_value_is_an_argparse_error(module, argv, flag, capsys):
    code, last = parse_error(module.parse_args, REQUIRED + argv, capsys)
    assert code == 2 and re.fullmatch(rf".*: error: argument {flag}: .+", last), last


@pytest.mark.parametrize("module, argv", EDGES, ids=[f"{m.__name__}{' '.join(a)}" for m, a in EDGES])
def test_values_at_the_edge_are_accepted(module, argv):
    module.parse_args(REQUIRED + argv)


@pytest.mark.parametrize("module", [train_cam, make_cam, eval_cam, make_affinity_labels, train_affinity,
                                    make_seg_labels, train_seg, infer_seg])
def test_every_stage_parses_its_defaults(module):
    module.parse_args(REQUIRED)


def test_the_messages_name_the_value_and_what_it_must_be(capsys):
    _, last = parse_error(train_cam.parse_args, REQUIRED + ["--batch-size", "-2"], capsys)
    assert last.endswith("error: argument --batch-size: must be an integer >= 1, not '-2'")
    _, last = parse_error(train_cam.parse_args, REQUIRED + ["--resize-long", "640", "320"], capsys)
    assert last.endswith("error: argument --resize-long: the first value must not exceed the second, not 640 320")
    _, last = parse_error(eval_cam.parse_args, REQUIRED + ["--threshold", "nan"], capsys)
    assert last.endswith("error: argument --threshold: must be a number in [0, 1], not 'nan'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("module", [train_cam, make_cam, infer_seg])
def test_device_cuda_without_cuda_is_an_argparse_error(module, capsys):
    code, last = parse_error(module.parse_args, REQUIRED + ["--device", "cuda"], capsys)
    assert code == 2 and last.endswith("error: argument --device: cuda: CUDA is not available on this machine "
                                       "(use --device cpu)")


@pytest.mark.parametrize("argv, flag", [(["--image-size", "8"], "--image-size"), (["--num-train", "-1"], "--num-train"),
                                        (["--seed", "-1"], "--seed")])
def test_toy_generator_flags(tmp_path, argv, flag, capsys):
    code, last = parse_error(toy.main, ["--out", str(tmp_path / "toy"), *argv], capsys)
    assert code == 2 and f"error: argument {flag}: " in last
    assert not (tmp_path / "toy").exists()


def test_bench_flags(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["bench.random_walk", "--repeat", "0"])
    code, last = parse_error(lambda _: bench_random_walk.main(), None, capsys)
    assert code == 2 and "error: argument --repeat: " in last


# ---- run and output directories --------------------------------------------------------------------

@pytest.mark.parametrize("where", ["file", "file/run"])
def test_a_work_dir_that_is_a_file_is_one_line(tmp_path, where, capsys):
    (tmp_path / "file").write_text("")
    argv = ["--data-root", str(tmp_path / "data"), "--work-dir", str(tmp_path / where)]
    code, last = parse_error(lambda a: stage.run_stage(eval_cam.main, a), argv, capsys)
    assert code == 2 and last == f"error: {tmp_path / 'file'}: not a directory"


@pytest.fixture
def stage_log():
    """Detach the stage log's handlers (its file, the captured stderr) after the test."""
    yield
    for handler in stage.log.handlers:
        handler.close()
    stage.log.handlers.clear()


def test_an_out_dir_that_is_a_file_is_one_line(tmp_path, capsys, stage_log):
    (tmp_path / "cams").write_text("")
    argv = [*REQUIRED[:2], "--work-dir", str(tmp_path / "run"), "--out-dir", str(tmp_path / "cams"), "--device",
            "cpu"]
    code, last = parse_error(lambda a: stage.run_stage(make_cam.main, a), argv, capsys)
    assert code == 2 and last == f"error: {tmp_path / 'cams'}: not a directory"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_inside_a_stage_is_one_line_and_the_handlers_are_restored(signum, capsys):
    """The signal raises ``Stopped`` where the stage is (an inference stage's loop), the stage
    ends with one line and 128 + its number; the process's handlers are as before after it."""
    before = signal.getsignal(signum)

    def stage_main(_argv):
        assert signal.getsignal(signum) == stage.stop_signals.handle
        signal.raise_signal(signum)
        raise AssertionError("the signal did not stop the stage")

    code, last = parse_error(lambda argv: stage.run_stage(stage_main, argv), [], capsys)
    assert code == 128 + signum
    assert last == (f"stopped by {signal.Signals(signum).name}; every output written is whole; to resume, run the "
                    "same command again: it does what is not done yet")
    assert signal.getsignal(signum) == before
