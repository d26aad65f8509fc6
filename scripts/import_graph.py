"""The project's import graph: its layers, cycles and upward imports, drawn into docs/architecture.md.

    python -m scripts.import_graph            # check, and rewrite the graph in docs/architecture.md
    python -m scripts.import_graph --check    # check only (tests/unit/test_architecture.py runs this)

Every ``import`` counts, at module level or inside a function (a deferred import is still a dependency). A
package may import its own modules and the packages of lower layers, never a higher one; no module may reach
itself through its imports.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first. Within a layer, packages do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("deployments",),  # the model services, and what they share (configs, errors, calls, SQL, telemetry)
    ("offline", "graphs"),  # the offline profile's models and data; the content pipeline
    ("edge",),  # the HTTP edge: ingress, routes, OpenAI protocol, access, limits
    ("app",),  # the builder over the graph and the edge; deploying the app from a Serve config
    ("cli", "cluster", "scripts", "bench"),  # commands: people's, the cluster's, the project's, the benchmarks
)
PACKAGES = {package: layer for layer, packages in enumerate(LAYERS) for package in packages}
BEGIN, END = "<!-- import-graph:begin -->", "<!-- import-graph:end -->"


def modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports() -> dict[str, set[str]]:
    """Module -> the project's modules it imports (a name imported from a package counts as its module when
    the name is one, else as the package)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        graph[name] = {t for t in targets if t in known and t != name}
    return graph


def package(module: str) -> str:
    return module.split(".")[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of modules larger than one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports of a package from a higher layer, or across packages of one layer."""
    bad = []
    for source, targets in graph.items():
        for target in targets:
            a, b = package(source), package(target)
            if a != b and PACKAGES[b] >= PACKAGES[a]:
                bad.append((source, target))
    return sorted(bad)


def package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        for target in targets:
            if package(source) != package(target):
                edges[package(source)].add(package(target))
    return edges


def mermaid(graph: dict[str, set[str]]) -> str:
    """The package graph as Mermaid, layers as rows (lowest at the bottom)."""
    lines = ["```mermaid", "flowchart BT"]
    for n, layer in enumerate(LAYERS):
        lines.append(f"  subgraph layer{n}[layer {n}]")
        lines += [f"    {p}" for p in layer]
        lines.append("  end")
    for source, targets in sorted(package_edges(graph).items()):
        lines += [f"  {source} --> {target}" for target in sorted(targets)]
    lines.append("```")
    return "\n".join(lines)


def module_table(graph: dict[str, set[str]]) -> str:
    """Which modules of each room use which other packages (the rooms and their doors)."""
    rows = ["| package | modules | imports from |", "|---|---|---|"]
    by_package: dict[str, list[str]] = defaultdict(list)
    for module in graph:
        by_package[package(module)].append(module)
    for name in (p for layer in LAYERS for p in layer):
        uses = sorted(package_edges(graph).get(name, set()))
        rows.append(f"| `{name}` | {len(by_package[name])} | {', '.join(f'`{u}`' for u in uses) or '-'} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check only; do not rewrite docs/architecture.md")
    args = parser.parse_args()
    graph = imports()
    problems = [f"cycle: {' <-> '.join(group)}" for group in cycles(graph)]
    problems += [f"upward: {a} imports {b}" for a, b in upward(graph)]
    if not args.check:
        doc = ROOT / "docs" / "architecture.md"
        text = doc.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        drawn = f"{BEGIN}\n{mermaid(graph)}\n\n{module_table(graph)}\n{END}"
        doc.write_text(head + drawn + tail)
    print("\n".join(problems) or f"{len(graph)} modules: no cycle, no upward import")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
