"""The package's layering, asserted on the source: the product (core) imports no ROS, no harness, no trainer and
no data set; the layers above import only downwards; nothing imports a node."""
import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "eclm_ros"
# what each layer may import from the package (besides itself); cli.py, the command dispatcher, sits on top
ALLOWED = {
    "core": set(),
    "sim": {"core"},
    "training": {"core", "sim"},
    "ros": {"core", "sim", "msg", "srv"},  # sim: the camera_stream node plays the simulated world
    "bench": {"core", "sim", "training", "ros", "msg", "srv"},  # srv: the fault bench registers an edge itself
}


def _imports(path: Path) -> set[str]:
    """Absolute names of the eclm_ros modules a file imports (relative imports resolved)."""
    parts = ["eclm_ros", *path.relative_to(PACKAGE).with_suffix("").parts]
    package = parts[:-1]  # a module's package; for __init__ the package itself
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            names.update([name] if node.module else [f"{name}.{a.name}" for a in node.names])
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("eclm_ros.")}


def _graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        if len(rel) > 1:
            graph[rel[0]].update(n.split(".")[1] for n in _imports(path))
    return graph


def test_each_layer_imports_only_downwards():
    graph = _graph()
    assert set(ALLOWED) <= set(graph), "a layer is missing: update ALLOWED"
    for layer, deps in graph.items():
        assert layer in ALLOWED, f"eclm_ros/{layer}/ is not in the layering: add it to ALLOWED and architecture.md"
        assert deps - {layer} <= ALLOWED[layer], f"{layer} imports {sorted(deps - {layer} - ALLOWED[layer])}"


def test_nothing_imports_a_node():
    for path in PACKAGE.rglob("*.py"):
        if "nodes" not in path.relative_to(PACKAGE).parts:
            bad = {n for n in _imports(path) if n.startswith("eclm_ros.ros.nodes")}
            assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}: nodes are entry points only"


def test_the_product_loads_without_ros_or_the_harness():
    """Importing every core module in a fresh interpreter loads no rclpy, no console/plot libraries and none of
    sim / training / bench / ros: a robot needs only the product's own dependencies. (torch itself loads
    tqdm, so for tqdm the source is checked.)"""
    for path in (PACKAGE / "core").rglob("*.py"):
        text = path.read_text()
        assert "import tqdm" not in text and "from tqdm" not in text, f"{path.name} uses tqdm: progress is the CLI's"
    modules = sorted(".".join(("eclm_ros", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
                     for p in (PACKAGE / "core").rglob("*.py"))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout.split())
    assert len(modules) > 20 and set(modules) <= loaded
    forbidden = {m for m in loaded if m.split(".")[0] in {"rclpy", "rich", "matplotlib", "yaml", "ray"}
                 or m.startswith(("eclm_ros.sim", "eclm_ros.training", "eclm_ros.bench", "eclm_ros.ros"))}
    assert not forbidden, f"the product pulled in {sorted(forbidden)}"


def test_ray_is_imported_only_where_the_cloud_learns_on_it_and_only_when_asked():
    """Ray is optional: only core/ray_strategy.py imports it, inside a function (when a RayStrategy is built), so
    the product, the nodes and every test without Ray run where it is not installed."""
    importers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n.split(".")[0] == "ray" for n in names):
                importers.add(path.relative_to(PACKAGE).as_posix())
                assert node.col_offset > 0, f"{path.name} imports ray at module level"
    assert importers == {"core/ray_strategy.py"}, importers


def test_every_module_imports():
    """Catches an import a move left behind in a function body (the layering test reads only names)."""
    import importlib
    import importlib.util

    from node_processes import ros_available

    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("eclm_ros", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        top_level = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names} | {
            n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and not n.level}
        if any(importlib.util.find_spec(t) is None for t in top_level) or (
                ros_available() is not None and "eclm_ros.ros" in name):
            continue  # a dependency this machine lacks (launch without the shared sources, rclpy without ROS)
        module = importlib.import_module(name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and node.col_offset > 0:  # a deferred import
                base = module.__name__ if path.name == "__init__.py" else module.__name__.rsplit(".", 1)[0]
                target = importlib.util.resolve_name("." * node.level + (node.module or ""), base)
                assert importlib.util.find_spec(target) is not None, f"{name}: {target} does not exist"
