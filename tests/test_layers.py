"""The house's layering, enforced: the package's import graph (read with `ast`, lazy imports inside functions
included) has no circles, and no module imports from a wing above its own. The order is written once, here;
README's architecture section draws it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vdvae_zoo"

#: The floors, lowest first. A module may import from its own wing (a subpackage or a root module) and from any
#: floor below; wings on the same floor do not import each other.
FLOORS = [
    ["_version"],
    ["data"],  # files, images, data sets, plots, progress: no models
    ["config"],  # the architecture as data (config.py, blocks.py its grammar)
    ["nn"],  # the network, its output head, draws, runtime
    ["compute"],  # batching, memory, distributed
    ["weights"],  # hub, manifest, original files, pretrained, cards, registry
    ["scoring", "coding", "latents", "generation"],  # bounds, scoring engine; bits-back; latents; decoding
    ["model"],  # the VDVAE facade (generation.py is its GenerationMixin)
    ["factory"],  # load(): a model from a name, folder, file or Hub id
    ["training", "restore"],  # fine-tuning; restoration with the prior
    ["demo"],  # the page (Gradio): one library call per tab
    ["__init__", "cli"],  # the public API and the command line
]
WING_FLOOR = {wing: level for level, wings in enumerate(FLOORS) for wing in wings}
#: Root modules that share a room with another: blocks.py is config's grammar; __main__ is the CLI's door.
SAME_ROOM = {"blocks": "config", "__main__": "cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def wing_of(module: str) -> str:
    """vdvae_zoo.nn.network -> nn; vdvae_zoo.model -> model; vdvae_zoo (the package's __init__) -> __init__."""
    parts = module.split(".")
    wing = parts[1] if len(parts) > 1 else "__init__"
    return SAME_ROOM.get(wing, wing)


def import_graph() -> dict:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names if a.name.startswith("vdvae_zoo")]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").startswith("vdvae_zoo"):
                    stem = node.module
                else:
                    continue
                found = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
            else:
                continue
            for target in found:
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target in modules and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def test_every_wing_has_a_floor():
    wings = {wing_of(m) for m in import_graph()}
    assert wings <= set(WING_FLOOR), f"wings without a floor in FLOORS: {sorted(wings - set(WING_FLOOR))}"


def upward_imports(graph: dict) -> list:
    wrong = []
    for module, targets in graph.items():
        here = wing_of(module)
        for target in targets:
            there = wing_of(target)
            if there == here or (here == "__init__" and there != "cli"):
                continue
            if WING_FLOOR[there] >= WING_FLOOR[here]:
                wrong.append(f"{module} (floor {WING_FLOOR[here]}) imports {target} (floor {WING_FLOOR[there]})")
    return wrong


def test_imports_run_down_the_floors():
    wrong = upward_imports(import_graph())
    assert not wrong, "imports that do not run down:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = import_graph()
    state: dict = {}
    circles = []

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package's __init__ importing its own modules, which import siblings through the package, is no circle
    circles = [c for c in circles if not c.startswith("vdvae_zoo -> ")]
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_checker_sees_what_it_must():
    """The graph is read as imports are written (relative, lazy ones inside functions included), and an import
    up the floors or between two wings of one floor is reported."""
    graph = import_graph()
    assert "vdvae_zoo.config" in graph["vdvae_zoo.nn.network"]  # from ..config import VDVAEConfig
    assert "vdvae_zoo.data.files" in graph["vdvae_zoo.latents"]  # a lazy import inside a function
    for module, target in [
        ("vdvae_zoo.data.files", "vdvae_zoo.model"),
        ("vdvae_zoo.coding.archive", "vdvae_zoo.scoring.engine"),
    ]:
        bad = {k: set(v) for k, v in graph.items()}
        bad[module].add(target)
        assert upward_imports(bad) == [
            f"{module} (floor {WING_FLOOR[wing_of(module)]}) imports {target} (floor {WING_FLOOR[wing_of(target)]})"
        ]
