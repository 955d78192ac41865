"""Docs that cannot go stale silently: every flag that README.md and docs/ show in a command
of a stage script or driver is a flag of that script (its --help lists it), and no --help
prints a default twice."""
import re
import shlex
import subprocess

import pytest

from tests.scripts import REPO, run

STAGES = ("train_cam.py", "make_cam.py", "eval_cam.py", "make_affinity_labels.py", "train_affinity.py",
          "make_seg_labels.py", "train_seg.py", "infer_seg.py", "ladder_figure.py")
DRIVERS = ("run_voc.sh", "run_coco.sh")
SHELL_ENDS = {"|", "||", "&&", ";", ">", ">>", "2>&1", "&"}


def help_text(script):
    if script in DRIVERS:
        result = subprocess.run(["bash", str(REPO / script), "--help"], cwd=REPO, capture_output=True, text=True,
                                timeout=60)
    else:
        result = run(script, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def helps():
    return {script: help_text(script) for script in STAGES + DRIVERS}


def documented_commands():
    """(page, script, arguments) of every command of a stage script or driver in README.md
    and docs/*.md: in code blocks (continued lines joined) and in inline code."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text().replace("\\\n", " ")
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
        inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for line in [line for block in blocks for line in block.splitlines()] + inline:
            line = re.sub(r"(^|\s)#.*", "", line)
            try:
                words = shlex.split(line)
            except ValueError:  # an unfinished quote: not a command
                continue
            for i, word in enumerate(words):
                name = word.split("/")[-1]
                if word == "scripts/quickstart.sh" and words[i + 1:i + 2] == ["toy"]:
                    yield page.name, "run_voc.sh", command_words(words[i + 2:])
                elif name in STAGES + DRIVERS and (i == 0 or words[i - 1] in ("python", "bash")
                                                   or words[i - 1].startswith("--nproc")):
                    yield page.name, name, command_words(words[i + 1:])


def command_words(words):
    taken = []
    for word in words:
        if word in SHELL_ENDS or word.startswith("#"):
            break
        taken.append(word)
    return taken


def listed(flag, help_text):
    return re.search(rf"(^|[\s\[,|]){re.escape(flag)}([\s\],=]|$)", help_text, flags=re.M) is not None


def shown_flags(script, words):
    """(script, flag) of every --flag of a command; a driver's ``--STAGE "FLAGS"`` option
    gives the flags of its string as the stage script's."""
    words = iter(words)
    for word in words:
        if not word.startswith("--") or word == "--help":  # every script has --help
            continue
        stage = word[2:].replace("-", "_") + ".py"
        if script in DRIVERS and stage in STAGES:
            yield from ((stage, flag.split("=")[0]) for flag in shlex.split(next(words, "")) if flag.startswith("--"))
        else:
            yield script, word.split("=")[0]


def test_the_docs_show_commands():
    shown = {script for _, script, _ in documented_commands()}
    assert {"run_voc.sh", "eval_cam.py", "train_seg.py", "infer_seg.py", "ladder_figure.py"} <= shown


def test_every_flag_the_docs_show_exists(helps):
    missing = sorted({f"{page}: {script} {flag}" for page, command, words in documented_commands()
                      for script, flag in shown_flags(command, words) if not listed(flag, helps[script])})
    assert not missing, "flags the docs show that the scripts do not have:\n" + "\n".join(missing)


def option_entries(text):
    """The entries of an argparse --help (an option's line and the lines that continue it)."""
    return [entry for paragraph in text.split("\n\n") for entry in re.split(r"\n(?=  -)", paragraph)]


@pytest.mark.parametrize("script", STAGES)
def test_no_help_prints_a_default_twice(helps, script):
    twice = [" ".join(entry.split()) for entry in option_entries(helps[script])
             if entry.count("(default:") > 1 or ("(default:" in entry and entry.lower().count("default") > 1)]
    assert not twice, f"{script} --help:\n" + "\n".join(twice)
