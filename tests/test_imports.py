"""The package's import graph: no circles, and no arrow running up from a lower layer to a higher one.

The graph is read from the source with `ast` (nothing is imported, so the test is instant) and
every failure names the edge and the line that makes it, e.g.

    minimind.model.lora -> minimind.checkpoint (src/minimind/model/lora.py:38)

Both rules count every import of a minimind module, at module level or inside a function. A
function-local import is only there to keep `minimind --help` (and other light commands) from
paying for torch or an optional dependency; it still makes one module depend on another, and a
circle closed by a local import is a circle all the same (every circle named in issue 13 was
closed by one).

    python tests/test_imports.py     prints the layers and every edge that crosses packages
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "minimind"

# The layers, lowest first. A module may import from its own layer and from any layer below it,
# never from one above. An entry covers a module or a package and everything in it.
#   0  the root package (only __version__ and lazy re-exports), errors, safe file I/O
#   1  ModelConfig and presets; choosing a device and dtype
#   2  the model (layers, MoE, LoRA) and the tokenizer: independent of each other
#   3  model directories: a model and its tokenizer, saved and loaded together
#   4  data: JSONL formats, validation, token caches, packing (needs a tokenizer, not a model)
#   5  inference: the generation engine, chat, teacher data (generate-data reads prompt files)
#   6  the stages that use the engine and the data: training, RL, evaluation, export. Side by
#      side: evaluate reads train's checkpoints list, train/lora reuses export's out-dir check
#   7  the server
#   8  the commands: `minimind info`, the quickstart pipeline, the CLI
LAYERS = [
    ["minimind", "minimind.errors", "minimind.files"],
    ["minimind.config", "minimind.device"],
    ["minimind.model", "minimind.tokenizer"],
    ["minimind.checkpoint"],
    ["minimind.data"],
    ["minimind.infer"],
    ["minimind.train", "minimind.rl", "minimind.evaluate", "minimind.export"],
    ["minimind.serve"],
    ["minimind.info", "minimind.quickstart", "minimind.vision_quickstart", "minimind.cli"],
]

# Edges that break a rule while another change removes them: (importer, imported) -> why.
# Delete an entry when its change lands; the test fails on an entry that no longer matches an
# edge, so the list cannot go stale. Empty: nothing breaks a rule today.
KNOWN: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / ROOT).rglob("*.py"))}


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (before its imported names)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str, path: Path, known: set[str]):
    """(imported module, line, inside a function) for every import of a minimind module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    local_lines = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            local_lines.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(name, path.name == "__init__.py", node)
            # `from pkg import sub` imports the submodule pkg.sub; `from mod import name` imports mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target == ROOT or target.startswith(ROOT + "."):
                yield target, node.lineno, id(node) in local_lines


def graph() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) -> where ('path:line', '(in a function)' when local). Importing
    a.b.c also runs the __init__ of a.b, so that is an edge too, unless a.b is the importer's
    own package (which Python has already started importing)."""
    mods = modules()
    edges = defaultdict(list)
    for name, path in mods.items():
        own = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
        for target, line, local in imports(name, path, set(mods)):
            parts = target.split(".")
            for n in range(len(parts), 0, -1):
                t = ".".join(parts[:n])
                if t != name and t in mods and (t == target or t not in own):
                    where = f"{path.relative_to(SRC.parent)}:{line}" + (" (in a function)" if local else "")
                    edges[(name, t)].append(where)
    return edges


def layer(name: str) -> int:
    best, rank = "", None
    for i, entries in enumerate(LAYERS):
        for e in entries:
            covers = name == e or (e != ROOT and name.startswith(e + "."))
            if covers and len(e) > len(best):
                best, rank = e, i
    return rank


def cycles(edges) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    succ = defaultdict(set)
    for a, b in edges:
        succ[a].add(b)
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted({a for a, _ in edges} | {b for _, b in edges}):
        if v not in index:
            visit(v)
    return found


def describe(edges, pairs) -> str:
    return "\n".join(f"  {a} -> {b}  ({', '.join(edges[(a, b)])})" for a, b in sorted(pairs))


def test_every_module_has_a_layer():
    missing = sorted(m for m in modules() if layer(m) is None)
    assert not missing, f"add these modules (or their package) to LAYERS in {Path(__file__).name}: {missing}"


def test_no_import_runs_up_a_layer():
    edges = graph()
    up = [
        (a, b)
        for a, b in edges
        if (a, b) not in KNOWN and layer(a) is not None and layer(b) is not None and layer(b) > layer(a)
    ]
    assert not up, "imports from a lower layer to a higher one (see LAYERS):\n" + "\n".join(
        f"  [{layer(a)} -> {layer(b)}] {a} -> {b}  ({', '.join(edges[(a, b)])})" for a, b in sorted(up)
    )


def test_no_import_circles():
    edges = graph()
    live = {e: w for e, w in edges.items() if e not in KNOWN}
    found = cycles(live)
    assert not found, "import circles (each line is an edge inside one circle):\n" + "\n\n".join(
        describe(live, [(a, b) for a, b in live if a in comp and b in comp]) for comp in found
    )


def test_known_exceptions_still_exist():
    # An entry of KNOWN whose edge is gone is done: delete it so it cannot hide a new one.
    stale = sorted(set(KNOWN) - set(graph()))
    assert not stale, f"remove these from KNOWN in {Path(__file__).name}, they no longer occur: {stale}"


if __name__ == "__main__":
    edges = graph()
    for i, entries in enumerate(LAYERS):
        print(f"layer {i}: {', '.join(entries)}")
    print("\nedges between packages (local = inside a function):")
    for (a, b), where in sorted(edges.items()):
        if a.split(".")[:2] != b.split(".")[:2]:
            local = all("(in a function)" in w for w in where)
            flag = " UP" if layer(a) is not None and layer(b) is not None and layer(b) > layer(a) else ""
            print(f"  [{layer(a)}->{layer(b)}]{flag} {a} -> {b}{'  (local)' if local else ''}")
    print("\ncircles:", cycles(edges) or "none")
