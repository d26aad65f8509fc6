"""The house's walls hold: no module reaches itself through its imports, no package imports a higher layer (the
layers and the drawn graph: scripts/import_graph.py, docs/architecture.md)."""

from __future__ import annotations

from scripts.import_graph import LAYERS, cycles, imports, modules, package, upward


def test_no_import_cycle_and_no_upward_import() -> None:
    graph = imports()
    assert cycles(graph) == []
    assert upward(graph) == []


def test_every_package_has_its_place_in_a_layer() -> None:
    placed = {p for layer in LAYERS for p in layer}
    assert {package(m) for m in modules()} == placed


def test_the_graph_sees_deferred_imports() -> None:
    """An import inside a function is a dependency too (the cycles found before were of that kind)."""
    assert "deployments.text.transformers_engine" in imports()["deployments.text.service"]
