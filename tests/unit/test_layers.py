"""The package's layers import downwards only (docs/design.md, "Layers"): a module of one layer may
import its own layer and the layers below, never one above, so there are no import cycles between
layers, and within a layer none at module level either."""
import ast
import pathlib

import multiwrite

ROOT = pathlib.Path(multiwrite.__file__).parent
# lowest first; a module's layer is the first entry its dotted name starts with
LAYERS = [
    ("base", ["multiwrite.errors", "multiwrite._config", "multiwrite._core", "multiwrite.topology", "multiwrite._util"]),
    ("transport", ["multiwrite.transport"]),
    ("runtime", ["multiwrite.runtime"]),
    ("engine", ["multiwrite.engine"]),
    ("ops", ["multiwrite.ops"]),
]


def layer_of(name):
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    return None        # the API and tools above every layer (__init__, moe, backend, bench, stress)


def module_name(path):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path, name):
    """(imported module, at module level?) for every import of multiwrite in ``path``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("multiwrite"):
                out.append((t, id(node) in top))
    return out


def test_layers_import_downwards_only():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        mine = layer_of(name)
        if mine is None:
            continue
        for target, _ in imports(path, name):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                wrong.append(f"{name} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert not wrong, "\n".join(wrong)


def test_no_module_level_import_cycles():
    graph = {}
    names = {module_name(p) for p in ROOT.rglob("*.py")}
    for path in ROOT.rglob("*.py"):
        name = module_name(path)
        graph[name] = {t for t, top in imports(path, name) if top and t in names and t != name
                       and not name.startswith(t + ".")}       # a package's own __init__ is not a cycle
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            visit(m)
        stack.pop()
    for n in sorted(graph):
        visit(n)
    assert not cycles, cycles
