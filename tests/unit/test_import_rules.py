"""The architecture's import rules, checked over every module's imports (ast, nothing is imported).

- `loraplex.api` (the shared contract) imports neither side;
- the operator (`loraplex_operator`) never imports the data plane (`inference_pod`), and the data plane never the
  operator: both meet only in `loraplex.*`;
- `loraplex.cli` imports either side only lazily, inside the function of the subcommand that runs it;
- `loraplex.sim` (the fleet simulator, a tool above both sides) imports only their pure decision modules, through
  `loraplex.sim.project`, so it runs the very code the sidecar and the operator run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "loraplex": ROOT / "loraplex",
    "inference_pod": ROOT / "inference_pod",
    "loraplex_operator": ROOT / "operator" / "loraplex_operator",
}
SIDES = ("inference_pod", "loraplex_operator")
SIM_MAY_IMPORT = (
    "inference_pod.router.placement",
    "inference_pod.router.stats",
    "inference_pod.adapters.lru",
    "loraplex_operator.logic",
)


def module_name(package: str, path: Path) -> str:
    rel = path.relative_to(PACKAGES[package]).with_suffix("")
    parts = [package, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level?) for every import statement of the file."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(n) for n in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` blocks and try/except at module level count as module level
        if isinstance(node, ast.If | ast.Try):
            top_level |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                names = [".".join([*base, node.module] if node.module else base)]
            else:
                names = [node.module or ""]
        else:
            continue
        out += [(n, node.lineno, id(node) in top_level) for n in names]
    return out


def all_edges() -> list[tuple[str, str, int, bool]]:
    edges = []
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            mod = module_name(package, path)
            edges += [(mod, target, line, top) for target, line, top in imports(path, mod)]
    return edges


def violation(source: str, target: str, top_level: bool) -> str | None:
    top = target.split(".")[0]
    if source.startswith("loraplex.api") and top in SIDES:
        return "loraplex.api is the shared contract: it imports neither side"
    if source == "loraplex.cli" and top in SIDES and top_level:
        return "loraplex.cli imports a side only inside the subcommand that runs it"
    if source.startswith("loraplex.sim") and top in SIDES:
        if source != "loraplex.sim.project":
            return "loraplex.sim reaches the sides only through loraplex.sim.project"
        if not any(target == m or target.startswith(m + ".") for m in SIM_MAY_IMPORT):
            return "loraplex.sim drives only the sides' pure decision modules"
        return None
    if source.startswith("loraplex.") and not source.startswith(("loraplex.api", "loraplex.cli")) and top in SIDES:
        return "loraplex.* (the contract) imports neither side"
    if source.startswith("loraplex_operator") and top == "inference_pod":
        return "the operator never imports the data plane (share through loraplex.api)"
    if source.startswith("inference_pod") and top == "loraplex_operator":
        return "the data plane never imports the operator (share through loraplex.api)"
    return None


def test_no_forbidden_import_edge() -> None:
    edges = all_edges()
    assert len(edges) > 100  # the walk found the tree
    bad = [f"{s} -> {t} (line {line}): {why}" for s, t, line, top in edges if (why := violation(s, t, top))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("source", "target", "top_level", "bad"),
    [
        ("loraplex_operator.logic.routes", "inference_pod.router.placement", True, True),
        ("loraplex_operator.controllers.app", "inference_pod", False, True),
        ("inference_pod.worker.server", "loraplex_operator.constants", False, True),
        ("loraplex.api.routing_table", "inference_pod.router", True, True),
        ("loraplex.api.names", "loraplex_operator", False, True),
        ("loraplex.cli", "inference_pod.worker.server", True, True),
        ("loraplex.cli", "inference_pod.worker.server", False, False),
        ("loraplex.cli", "loraplex_operator.__main__", False, False),
        ("loraplex_operator.logic.shards", "loraplex.api.routing_table", True, False),
        ("inference_pod.router.sidecar", "loraplex.api.headers", True, False),
        ("loraplex.sim.project", "loraplex_operator.logic.sizing", True, False),
        ("loraplex.sim.project", "inference_pod.router.placement", True, False),
        ("loraplex.sim.project", "inference_pod.worker.server", True, True),
        ("loraplex.sim.fleet", "inference_pod.router.placement", True, True),
    ],
)
def test_rule_table(source: str, target: str, top_level: bool, bad: bool) -> None:
    assert (violation(source, target, top_level) is not None) == bad


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("from .sibling import a\nfrom . import b\n")
    assert [t for t, _, _ in imports(f, "inference_pod.worker.server")] == [
        "inference_pod.worker.sibling",
        "inference_pod.worker",
    ]


def test_the_operator_runs_without_the_data_plane_dependencies() -> None:
    """`pip install .[operator]` has no torch, diffusers, PIL...: the operator must not need them.

    (prometheus_client is in the operator extra: the operator serves its own /metrics.)
    """
    blocked = [
        "torch",
        "diffusers",
        "transformers",
        "peft",
        "safetensors",
        "accelerate",
        "PIL",
        "numpy",
        "psutil",
        "inference_pod",
    ]
    code = (
        "import sys\n"
        f"blocked = {blocked!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in blocked:\n"
        "            raise ImportError(f'{name} is not in the operator extra')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import loraplex_operator.controllers.app, loraplex_operator.__main__\n"
        "from loraplex.cli import main\n"
        "try:\n"
        "    main(['operator', '--help'])\n"
        "except SystemExit as e:\n"
        "    sys.exit(e.code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "loraplex operator" in out.stdout
