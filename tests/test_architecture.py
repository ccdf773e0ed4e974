"""The import rules of ARCHITECTURE.md, checked on the source: one direction, nothing imports upward."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hfvision"

# Layer of each top-level part; a module may import only parts of a lower layer, or its own part.
LAYERS = {
    "errors": 0,
    "recipe": 1, "spec": 1, "fileio": 1, "accelerator": 1, "process": 1,
    "data": 2, "models": 2,
    "training": 3, "evaluation": 3,
    "explain": 4, "hub": 4, "run_dir": 4, "export": 4,
    "pipeline": 5, "predict": 5, "sweep": 6, "commands": 7, "cli": 8,
}


def part_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def imports_of(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hfvision."):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("hfvision."))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_part_has_a_layer():
    parts = {p.stem for p in PACKAGE.iterdir() if (p.suffix == ".py" or p.is_dir()) and not p.name.startswith("_")}
    assert parts - {"__pycache__"} <= set(LAYERS), parts - set(LAYERS)


def test_imports_go_down_the_layers_only():
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = part_of(module_name(path))
        if not here or here == "__main__":  # `python -m hfvision`, the top of the house
            continue
        for imported in imports_of(path):
            there = part_of(imported)
            if there != here and LAYERS[there] >= LAYERS[here]:
                broken.append(f"{module_name(path)} imports {imported}")
    assert not broken, "\n".join(broken)


def import_graph() -> dict[str, set[str]]:
    """Each hfvision module -> the hfvision modules it imports, at module level or inside a function."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hfvision":
                # ``from hfvision.models import tuning`` imports the module hfvision.models.tuning
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(paths)
                graph[name] |= submodules or {node.module}
            elif isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names if alias.name.split(".")[0] == "hfvision"}
    return graph


def test_no_import_circle():
    """No module reaches itself through imports, within a package or across: a function-local import that would
    close a circle is a circle too (import order hides it; it does not remove it)."""
    graph = import_graph()
    done, path = set(), []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            circle = visit(imported)
            if circle:
                return circle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        circle = visit(module)
        assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_named_rules_hold():
    """The rules ARCHITECTURE.md states by name: data and models are independent, training trains."""
    forbidden = {"data": ("models", "training", "evaluation", "explain", "hub", "pipeline"),
                 "models": ("data", "training", "evaluation", "explain", "hub", "pipeline"),
                 "training": ("evaluation", "explain", "hub", "pipeline"),
                 "evaluation": ("training", "explain", "hub", "pipeline")}
    for part, banned in forbidden.items():
        for path in (PACKAGE / part).rglob("*.py"):
            for imported in imports_of(path):
                assert part_of(imported) not in banned, f"{module_name(path)} imports {imported}"


def test_the_one_script_is_a_shim_over_hfvision_train():
    """One entry point per command: ``hfvision COMMAND`` (or ``python -m hfvision COMMAND``). The one script kept is
    ``scripts/finetune.py``, the path ``accelerate launch`` takes: a docstring, two imports and
    ``run_command("train", sys.argv[1:])`` under ``__main__``, nothing else, so tests that run ``hfvision train`` in
    process (``run_cli_in_process``) run what it runs."""
    from hfvision.cli import COMMANDS

    subcommand_of = {"finetune.py": "train"}
    scripts = {path.name: path for path in (PACKAGE.parent / "scripts").glob("*.py")}
    assert set(scripts) - {"benchmark.py"} == set(subcommand_of)  # benchmark.py compares with code outside hfvision
    for name, subcommand in subcommand_of.items():
        assert subcommand in COMMANDS
        body = ast.parse(scripts[name].read_text()).body
        assert [ast.unparse(node) for node in body[1:]] == [
            "import sys", "from hfvision.cli import run_command",
            f"if __name__ == '__main__':\n    run_command({subcommand!r}, sys.argv[1:])"], name
        assert isinstance(body[0], ast.Expr) and isinstance(body[0].value.value, str), name  # the docstring
