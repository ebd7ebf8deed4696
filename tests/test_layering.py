"""No import cycles among interp's modules, lazy and TYPE_CHECKING imports included, and loading returns
data while the model builds itself."""

import ast
from pathlib import Path

from interp import HookedTransformer

PACKAGE = Path(__file__).resolve().parent.parent / "interp"


def imported_modules(path: Path, module: str, known: set[str]) -> set[str]:
    """interp modules `path` imports anywhere (top level, inside functions, under TYPE_CHECKING)."""
    found = set()
    package_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package_parts[: len(package_parts) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target not in (module, "interp"):
                found.add(target)
    return found


def test_no_import_cycles():
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph = {module: imported_modules(path, module, set(files)) for module, path in files.items()}
    state: dict[str, str] = {}  # "open" while on the DFS stack, "done" after

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            assert state.get(target) != "open", f"import cycle: {' -> '.join(trail + [module, target])}"
            if target not in state:
                visit(target, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert len(graph) > 20 and graph["interp.model"] >= {"interp.loading", "interp.cache"}  # the graph is real


def test_loading_returns_data_and_from_pretrained_builds_cls():
    import interp.loading as loading

    loaded = loading.load_weights("interp-toy")
    assert set(loaded._fields) == {"cfg", "state", "tokenizer"} and "W_E" in loaded.state

    class MyModel(HookedTransformer):
        pass

    model = MyModel.from_pretrained("interp-toy", fold_ln=True)
    assert type(model) is MyModel and model.processing["fold_ln"] and not model.processing["center_unembed"]
