"""The package's map stays readable: nanogpt/ is in layers, and a module imports only from its own
layer or the layers below it (README, Layout; docs/contributing.md, The map). Read from the source
(every import, including those inside functions), so no module is imported here."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nanogpt"

# bottom first; a module of layer i may import from layers <= i
LAYERS = [
    {"errors", "paths", "parametrization"},
    {"io", "model"},
    {"tokenizer", "config"},
    {"data"},
    {"runtime"},
    {"hf"},
    {"checkpoint"},
    {"run"},
    {"evals"},
    {"scaling"},
    {"training"},
    {"tasks"},
    {"gate"},
    {"export", "plot", "perplexity", "lm_eval", "pretrained", "runs"},  # the command entries
]
ENTRIES = LAYERS[-1]


def unit(module: str) -> str | None:
    """nanogpt.training.loop -> training; nanogpt.io -> io; other packages -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "nanogpt" and len(parts) > 1 else None


def layer_of(name: str) -> int:
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    raise AssertionError(f"{name} is in no layer of tests/test_layers.py: give the new module or folder "
                         "its place in LAYERS (and in README's Layout)")


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported nanogpt unit, line) for every import in the file, those inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nanogpt":
            names = [f"nanogpt.{a.name}" for a in node.names] if node.module == "nanogpt" else [node.module]
            found += [(unit(n), node.lineno) for n in names]
        elif isinstance(node, ast.Import):
            found += [(unit(a.name), node.lineno) for a in node.names if a.name.startswith("nanogpt.")]
    return [(u, line) for u, line in found if u]


def owner(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def test_every_import_points_down_or_sideways():
    upward = []
    for path in SOURCES:
        me = owner(path)
        for target, line in imports(path):
            if layer_of(target) > layer_of(me):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({me}) imports {target}, a layer above")
    assert not upward, "\n".join(upward)


def test_the_check_can_fail(tmp_path):
    """The reading above sees imports inside functions and `from nanogpt import x` forms."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from nanogpt import gate\n    import nanogpt.training.loop\n")
    assert imports(probe) == [("gate", 2), ("training", 3)]
    assert layer_of("gate") > layer_of("model")


def test_no_import_cycles_between_modules():
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in SOURCES}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nanogpt"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_library_modules_have_no_command_line_block():
    """A command line is an entry module (nanogpt/<name>.py or a package's __main__.py) that calls
    the library; library modules stay importable without side effects."""
    blocks = [str(p.relative_to(PACKAGE.parent)) for p in SOURCES
              if 'if __name__ == "__main__"' in p.read_text()
              and p.name != "__main__.py" and p.stem not in ENTRIES]
    assert not blocks, f"move these command lines into an entry module: {blocks}"
