"""The repository keeps the design card's layout, its imports stay layered, and the wheel is
self-contained."""

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from advunlearn_fast.prompts import AUTHORS_RETAIN_FILE

ROOT = Path(__file__).resolve().parents[1]

# Each part of the code may import its own part and the parts of lower rank, never higher:
# the CLI sits above the engine, the kernels import nothing of it.
RANKS = {
    "kernels": 0, "core": 1, "models": 2, "training": 3, "world": 3, "evaluation": 4, "demo": 5, "export": 5, "cli": 6,
}


def part_of_file(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).parts
    if rel[0] in ("kernels", "cli"):
        return rel[0]
    inner = rel[1]
    if inner in ("models", "training", "evaluation", "world", "export"):
        return inner
    return "demo" if inner == "demo.py" else "core"


def part_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "advunlearn_fast":
        return None
    if len(parts) == 1:
        return "core"
    if parts[1] in ("kernels", "cli", "models", "training", "evaluation", "world", "export"):
        return parts[1]
    return "demo" if parts[1] == "demo" else "core"


def package_of_file(path: Path, root: Path) -> str:
    """The installed package a file's relative imports resolve against (kernels/ and cli/ are
    installed as advunlearn_fast.kernels and advunlearn_fast.cli)."""
    rel = path.relative_to(root).with_suffix("").parts
    package = rel if rel[-1] == "__init__" else rel[:-1]
    package = tuple(p for p in package if p != "__init__")
    if package[0] in ("kernels", "cli"):
        package = ("advunlearn_fast", *package)
    return ".".join(package)


def engine_imports(path: Path, root: Path = ROOT) -> list[str]:
    """Every advunlearn_fast module a file imports, at any depth (function-level imports too),
    relative imports resolved; for `from M import a` the name M.a (a submodule or a name of M:
    either way it belongs to M's part, or names the part itself, as `from advunlearn_fast import demo`)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = importlib.util.resolve_name("." * node.level + module, package_of_file(path, root))
            names += [f"{module}.{a.name}" for a in node.names]
    return [n for n in names if n.split(".")[0] == "advunlearn_fast"]


def layering_violations(path: Path, root: Path = ROOT) -> list[str]:
    mine = part_of_file(path, root)
    wrong = []
    for name in engine_imports(path, root):
        theirs = part_of_module(name)
        if RANKS[theirs] > RANKS[mine] or (RANKS[theirs] == RANKS[mine] and theirs != mine):
            wrong.append(f"{path.relative_to(root)} ({mine}) imports {name} ({theirs})")
    return wrong


def source_files():
    for folder in ("advunlearn_fast", "kernels", "cli"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_top_level_is_the_design_cards():
    for name in ("advunlearn_fast", "kernels", "cli", "benchmarks", "tests"):
        assert (ROOT / name).is_dir(), name
    for name in ("setup.py", "README.md"):
        assert (ROOT / name).is_file(), name
    # Installed inside the package, never as the generic top-level names.
    assert not (ROOT / "advunlearn_fast" / "kernels").exists()
    assert not (ROOT / "advunlearn_fast" / "cli").exists()


def test_imports_are_layered():
    wrong = [line for path in source_files() for line in layering_violations(path)]
    assert not wrong, "\n".join(wrong)


def test_layering_check_sees_a_violation(tmp_path):
    """The check above flags an upward import wherever it hides: inside a function, written
    relative to the package, or as a part imported by name; imports downward or within a part pass."""
    models = tmp_path / "advunlearn_fast" / "models"
    models.mkdir(parents=True)
    bad = models / "x.py"
    bad.write_text("from ..errors import UserError\nfrom . import loading\nfrom advunlearn_fast.kernels import reference\n"
                   "def f():\n    from ..cli.main import cli\n    from .. import demo\n"
                   "    import advunlearn_fast.training.trainer\n")
    assert layering_violations(bad, tmp_path) == [
        "advunlearn_fast/models/x.py (models) imports advunlearn_fast.cli.main.cli (cli)",
        "advunlearn_fast/models/x.py (models) imports advunlearn_fast.demo (demo)",
        "advunlearn_fast/models/x.py (models) imports advunlearn_fast.training.trainer (training)",
    ]
    kernel = tmp_path / "kernels" / "functional.py"
    kernel.parent.mkdir()
    kernel.write_text("from . import reference\nfrom ..models import tiny\n")
    assert layering_violations(kernel, tmp_path) == [
        "kernels/functional.py (kernels) imports advunlearn_fast.models.tiny (models)"]


def test_benchmarks_call_the_engine_not_the_cli():
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        assert not [n for n in engine_imports(path) if part_of_module(n) == "cli"], path.name


def test_wheel_is_self_contained_and_runs_away_from_the_checkout(tmp_path):
    # Built from a copy: setuptools leaves build/ in the tree it builds.
    source = tmp_path / "source"
    for name in ("advunlearn_fast", "kernels", "cli"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = wheels.glob("advunlearn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "advunlearn_fast/kernels/functional.py" in names
    assert "advunlearn_fast/cli/main.py" in names
    assert "advunlearn_fast/world/weights/unet/diffusion_pytorch_model.safetensors" in names
    for name in ("church.csv", "garbage_truck.csv", "parachute.csv", "tench.csv", "vangogh.csv", "LICENSE", "README.md"):
        assert f"advunlearn_fast/evaluation/prompt_sets/{name}" in names  # the published prompt sets, with their licence
    # The authors' retain prompts, byte for byte, and their attribution beside them.
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("advunlearn_fast/data/coco_object_retain.csv") == AUTHORS_RETAIN_FILE.read_bytes()
        assert "CC BY 4.0" in archive.read("advunlearn_fast/data/NOTICE.md").decode()
    assert not [n for n in names if n.split("/")[0] in ("kernels", "cli", "tests", "benchmarks")]

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import sys, advunlearn_fast, advunlearn_fast.kernels, advunlearn_fast.cli.main as m;"
             "print(advunlearn_fast.__file__); print(advunlearn_fast.kernels.__file__);"
             "sys.argv = ['advunlearn', '--help']; m.main()")
    run = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    package_file, kernels_file = run.stdout.splitlines()[:2]
    assert package_file.startswith(str(site)) and kernels_file.startswith(str(site))
    assert "train" in run.stdout and "attack" in run.stdout


def test_plain_pytest_collects_what_python_m_pytest_collects(tmp_path):
    """The `pytest` console script puts its own folder on sys.path, not the checkout (unlike
    `python -m pytest`): pytest.ini's pythonpath must make benchmarks/ importable. One test file
    that imports benchmarks shows it; collecting the whole suite would show no more."""
    console_script = tmp_path / "pytest"
    console_script.write_text("import sys\nimport pytest\nsys.exit(pytest.console_main())\n")

    def collected(*command):
        run = subprocess.run([*command, "--collect-only", "-q", "tests/test_bench_step.py"], cwd=ROOT,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        return [line for line in run.stdout.splitlines() if "::" in line]

    plain = collected(sys.executable, str(console_script))
    assert "tests/test_bench_step.py::test_bench_step_reports_both_engines" in plain
    assert plain == collected(sys.executable, "-m", "pytest")
