"""The layout holds: a declared order of subpackages (lower never imports higher, function-level imports included),
no cycles, few top-level modules, and no package or archive in the repository."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffeval"

# Bottom to top. A module may import its own room and any room of a lower layer, never a peer or a higher one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core", "version"),  # errors, registry, options, seeds, quantize, signals, points, toml; the version string
    ("stats", "diffusion"),  # float64 moments and seed blocks; schedules and the denoiser view
    ("data",),  # image sources (a spec may name a statistics file, so data sits above stats)
    ("features", "samplers"),
    ("metrics", "checks"),
    ("engine",),  # the batch loop, references, distributed merge, checkpoints
    ("report",),
    ("run", "gate"),
    ("api", "evaluator", "testing"),
    ("cli",),
    ("demo",),  # the bundled plugin
    ("__init__", "__main__"),  # the public API and `python -m diffeval`
)
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def _room(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def import_graph() -> dict[str, set[str]]:
    """Module -> the diffeval modules it imports anywhere in its body (function-level imports included)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target.startswith("diffeval") and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a peer or a higher room, as 'importer (room, layer) imports imported (room, layer)'."""
    out = []
    for importer, imported in sorted(graph.items()):
        mine = _room(importer)
        for target in sorted(imported):
            theirs = _room(target)
            if theirs == mine:
                continue
            if mine not in LAYER or theirs not in LAYER:
                out.append(f"{importer} or {target} is in a room the declared order does not name ({mine}, {theirs})")
            elif LAYER[theirs] >= LAYER[mine]:
                out.append(
                    f"{importer} ({mine}, layer {LAYER[mine]}) imports {target} ({theirs}, layer {LAYER[theirs]}):"
                    " a lower room never imports a peer or a higher one"
                )
    return out


def test_every_room_is_in_the_declared_order():
    rooms = {_room(m) for m in import_graph()}
    assert rooms <= set(LAYER), f"rooms missing from LAYERS: {sorted(rooms - set(LAYER))}"


def test_lower_rooms_never_import_higher_ones():
    violations = layering_violations(import_graph())
    assert not violations, "\n".join(violations)


def test_the_layering_check_names_both_modules_of_a_violation():
    graph = import_graph()
    graph["diffeval.core.errors"] = graph["diffeval.core.errors"] | {"diffeval.engine.loop"}
    graph["diffeval.metrics.fid"] = graph["diffeval.metrics.fid"] | {"diffeval.checks.base"}  # a peer
    found = layering_violations(graph)
    assert any(v.startswith("diffeval.core.errors (core, layer 0) imports diffeval.engine.loop") for v in found), found
    assert any(v.startswith("diffeval.metrics.fid (metrics, layer 4) imports diffeval.checks.base") for v in found)


def test_few_top_level_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top


def test_every_subpackage_says_what_it_owns_and_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert len(doc) > 150, f"{init.parent.name}/__init__.py needs a docstring: what it owns, what it may import"
        assert "import" in doc, f"{init.parent.name}/__init__.py: say what the subpackage may import"


PACKAGE_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".zip", ".egg", ".tar", ".gz", ".bz2", ".xz", ".7z", ".rar", ".so")


def test_no_package_or_archive_is_tracked():
    root = PACKAGE.parent
    try:
        tracked = subprocess.run(
            ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True, timeout=60
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout")
    offenders = [f for f in tracked if f.lower().endswith(PACKAGE_SUFFIXES)]
    assert not offenders, f"packages or archives tracked by git (remove them with git rm --cached): {offenders}"
