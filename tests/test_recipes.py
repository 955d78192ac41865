"""The recipe table (tools/recipes.py) as the stages read it: published values, the toy's
CPU sizes over them, flags over both."""
import importlib

import pytest

from tools import recipes

REQUIRED = ["--data-root", "data", "--work-dir", "work"]


def parse(stage, *argv):
    return vars(importlib.import_module(stage).parse_args([*REQUIRED, *argv]))


@pytest.mark.parametrize("stage", sorted(recipes.PUBLISHED))
@pytest.mark.parametrize("name", recipes.RECIPE_NAMES)
def test_every_stage_takes_every_setting_of_each_recipe(stage, name):
    flag = recipes.CHOOSERS.get(stage)
    for choice in recipes.PUBLISHED[stage]:
        args = parse(stage, "--recipe", name, *([flag, choice] if flag else []))
        wanted = recipes.recipe(stage, name, choice)
        assert {key: args[key] for key in wanted} == wanted
        assert args["recipe"] == name


def test_the_toy_lays_cpu_sizes_over_the_chosen_method():
    psa = parse("train_cam", "--recipe", "toy", "--method", "cam")
    assert (psa["epochs"], psa["crop_size"], psa["backbone"], psa["device"]) == (8, 256, "efficientnet_lite0", "cpu")
    # what the toy does not name stays PSA's published value, not SIPE's
    assert (psa["weight_decay"], psa["clip_grad"], psa["color_jitter"]) == (5e-4, 0.0, recipes.PSA_JITTER)
    sipe = parse("train_cam")
    assert (sipe["epochs"], sipe["crop_size"], sipe["backbone"], sipe["weight_decay"]) == (5, 512, "resnet50", 1e-4)
    given = parse("train_cam", "--recipe", "toy", "--epochs", "2", "--backbone", "resnet34")
    assert (given["epochs"], given["backbone"], given["crop_size"]) == (2, "resnet34", 256)
    # a toy value of one choice stays with it: AffinityNet keeps the toy's epochs, IRN its own
    irn = parse("train_affinity", "--recipe", "toy", "--arch", "irn")
    affinitynet = parse("train_affinity", "--recipe", "toy", "--arch", "affinitynet")
    assert (irn["lr"], irn["epochs"], irn["crop_size"], irn["weight_decay"]) == (0.3, 10, 256, 1e-4)
    assert (affinitynet["lr"], affinitynet["epochs"], affinitynet["crop_size"]) == (1.0, 5, 256)
    assert affinitynet["weight_decay"] == 5e-4  # PSA's, under the toy's lr
    assert parse("train_affinity", "--arch", "irn")["lr"] == parse("train_affinity", "--arch", "affinitynet")["lr"] == 0.1


def test_frozen_is_its_own_flag_not_a_side_effect_of_the_weights(capsys):
    for stage, choice in (("train_cam", []), ("train_affinity", ["--arch", "affinitynet"]), ("train_seg", [])):
        assert parse(stage, *choice)["frozen"] is True  # the published recipe's
        assert parse(stage, *choice, "--no-frozen")["frozen"] is False  # with ImageNet weights too
        assert parse(stage, *choice, "--pretrained", "none", "--no-frozen")["frozen"] is False
        # random weights with frozen statistics and stem: an error, not a network of no features
        with pytest.raises(SystemExit):
            parse(stage, *choice, "--pretrained", "none")
        assert "--pretrained none trains from random weights" in capsys.readouterr().err
    # IRN's backbone is frozen by the method: random weights are its frozen backbone, and
    # --no-frozen is an error, not a flag ignored
    assert parse("train_affinity", "--arch", "irn", "--pretrained", "none")["frozen"] is True
    with pytest.raises(SystemExit):
        parse("train_affinity", "--arch", "irn", "--no-frozen")
    assert "--no-frozen: IRN trains its boundary layers on a frozen backbone" in capsys.readouterr().err


def test_a_recipe_setting_without_a_flag_is_refused(monkeypatch):
    monkeypatch.setitem(recipes.TOY, "make_cam", {"scale": (1.0,)})
    with pytest.raises(ValueError, match=r"make_cam has no flags for \['scale'\]"):
        parse("make_cam", "--recipe", "toy")


def test_help_shows_the_chosen_recipe(capsys):
    with pytest.raises(SystemExit):
        parse("train_affinity", "--recipe", "toy", "--arch", "affinitynet", "--help")
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines where it likes
    assert "--recipe toy --arch affinitynet" in shown
    assert "(default: efficientnet_lite0)" in shown and "(default: 5)" in shown  # the toy's backbone and epochs


@pytest.mark.parametrize("stage", sorted(recipes.CHOOSERS))
def test_the_table_holds_every_choice_of_the_stage_that_the_drivers_check_against_it(stage, capsys):
    # the stage's argparse choices, as its error lists them, are the table's
    with pytest.raises(SystemExit):
        parse(stage, recipes.CHOOSERS[stage], "no-such-choice")
    listed = capsys.readouterr().err.split("choose from ")[1].split(")")[0]
    choices = list(recipes.PUBLISHED[stage])
    assert [c.strip(" '") for c in listed.split(",")] == choices
    # the drivers' check: every choice passes, as does an --or value; anything else is one line, exit 2
    assert all(recipes.main([stage, "--flag=--x", f"--value={choice}"]) == 0 for choice in choices)
    assert recipes.main([stage, "--flag=--x", "--value=none", "--or", "none"]) == 0
    assert recipes.main([stage, "--flag=--x", "--value=no-such-choice"]) == 2
    assert capsys.readouterr().err == (f"error: --x must be {', '.join(choices[:-1])} or {choices[-1]}, "
                                       f"not 'no-such-choice'\n")
