"""No import cycles between autocompress's modules, counting the imports inside functions
(a lazy import still makes two modules depend on each other); type-checking-only imports
excepted."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "autocompress"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path], me: str) -> set[str]:
    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            yield child
            yield from walk(child)

    found = set()
    for node in walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("autocompress"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        # a module's own package is imported before it anyway: that arrow is not a dependency
        found |= {n for n in names if n in modules and n != me and not me.startswith(n + ".")}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_one_that_imports_it_back():
    modules = _modules()
    assert "autocompress.api" in modules and "autocompress.search._sampler" in modules
    graph = {name: _imports(path, modules, name) for name, path in modules.items()}
    assert "autocompress.config" in graph["autocompress.space"]  # the finder sees real arrows
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
