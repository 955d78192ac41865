"""The layering rule, written once: every import of the project points down.

Ground floor ``tools`` (pure helpers), then ``data``, then ``net``, then ``engine`` (the
stage plumbing), then the stage scripts and ``bench``.  A module may import its own
package and any package below it; a stage script imports no other stage script.
"""
import ast

from tests.scripts import REPO

LAYERS = {"tools": 0, "data": 1, "net": 2, "engine": 3, "bench": 4}
SCRIPT_LAYER = 4  # the stage scripts at the top level


def project_modules():
    """(module name, path) of every project module outside the tests."""
    for path in sorted(REPO.glob("*.py")):
        yield path.stem, path
    for package in LAYERS:
        for path in sorted((REPO / package).glob("*.py")):
            yield f"{package}.{path.stem}", path


def imported_modules(path):
    """Top-level names of the modules a file imports, with the line of each import."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def layer_of(top, scripts):
    if top in LAYERS:
        return LAYERS[top]
    return SCRIPT_LAYER if top in scripts else None  # None: not the project's (torch, numpy, ...)


def back_arrows(modules):
    """``module:line imports name`` for every import that points up or sideways."""
    scripts = {path.stem for path in REPO.glob("*.py")}
    arrows = []
    for module, path in modules:
        package = module.split(".")[0] if "." in module else None
        own = LAYERS[package] if package else SCRIPT_LAYER
        for top, line in imported_modules(path):
            target = layer_of(top, scripts)
            if target is None or top == package:
                continue
            if target > own or (target == own and (package is None or top in scripts)):
                arrows.append(f"{module}:{line} imports {top}")
    return arrows


def test_every_import_points_down():
    assert back_arrows(project_modules()) == []


def test_the_rule_sees_back_arrows(tmp_path):
    """The check itself: a helper importing a network or a stage script, a network importing
    the plumbing, a stage script importing another are caught; downward imports are not."""
    probes = {"tools.probe": "import torch\nfrom net.sipe import SIPENet\nimport train_cam\n",
              "net.probe": "from tools.io import read_image\nfrom net.pamr import PAMR\nfrom engine import stage\n",
              "make_probe": "from engine import stage\nfrom bench import measure\nimport train_cam\n"}
    modules = []
    for module, text in probes.items():
        path = tmp_path / f"{module}.py"
        path.write_text(text)
        modules.append((module, path))
    assert back_arrows(modules) == ["tools.probe:2 imports net", "tools.probe:3 imports train_cam",
                                    "net.probe:3 imports engine", "make_probe:2 imports bench",
                                    "make_probe:3 imports train_cam"]
