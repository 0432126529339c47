"""The metric rows each registry entry declares: one declaration per phase name, drawers that read declared keys,
and the strategies' phase constants all declared."""

from __future__ import annotations

import string
import sys

import pytest

from fedbrick_flower.metrics import GENERIC_PHASES, MetricDeclarations, Phase
from fedbrick_flower.registry import (
    AlgorithmEntry,
    algorithm_entry,
    algorithm_names,
    compare_curves,
    declared_phases,
    register,
    report_columns,
    report_plots,
    server_class,
)


def test_each_phase_name_has_one_declaration_and_the_similarity_rows_of_two_methods_differ() -> None:
    # Execute
    phases = declared_phases()

    # Assert: FedBip and FedMosaic once wrote rows of different layouts under one name; report read one as the other
    (fedbip,) = algorithm_entry("fedbip").metrics.phases
    fedmosaic = algorithm_entry("fedmosaic").metrics.phases
    assert fedbip.name not in {phase.name for phase in fedmosaic}
    assert {phase.name for phase in GENERIC_PHASES} <= set(phases)
    assert phases[fedbip.name] == fedbip


def test_a_plug_in_declaring_a_taken_phase_name_differently_is_refused() -> None:
    # Prepare: a phase under FedBip's name with another layout
    (taken,) = algorithm_entry("fedbip").metrics.phases
    entry = AlgorithmEntry(
        server="a:B",
        client="c:D",
        description="x",
        metrics=MetricDeclarations(phases=(Phase(taken.name, ("round", "other")),)),
    )

    # Execute / Assert
    with pytest.raises(ValueError, match=f"{taken.name!r} is declared twice"):
        register("plug-in", entry)
    assert "plug-in" not in algorithm_names()


def test_every_declared_plot_and_column_reads_keys_its_phase_declares() -> None:
    # Prepare
    phases = declared_phases()

    # Execute
    read = [
        (drawer.name, phase, keys)
        for drawer in [*report_plots(), *report_columns(), *compare_curves()]
        for phase, keys in drawer.needs()
    ]

    # Assert
    assert read
    for drawer, phase, keys in read:
        assert phase in phases, f"{drawer} reads undeclared phase {phase!r}"
        assert set(keys) <= set(phases[phase].keys), f"{drawer} reads keys {phase!r} rows do not declare"


def test_compare_curves_draw_one_curve_labelled_by_its_series_alone() -> None:
    # Execute / Assert: compare averages a series over seeds, so a label may name nothing else
    for plot in compare_curves():
        (curve,) = plot.curves
        named = {field for _, field, _, _ in string.Formatter().parse(curve.label) if field}
        assert named <= {curve.series_key}


@pytest.mark.parametrize("name", algorithm_names())
def test_the_phase_constants_of_a_strategy_and_its_bases_are_declared_by_its_entry(name: str) -> None:
    # Prepare: the *_PHASE constants of the modules of the strategy class and of its bases
    modules = {sys.modules[cls.__module__] for cls in server_class(name).__mro__}
    constants = {
        value
        for module in modules
        if module.__name__.startswith("fedbrick_flower.")
        for attribute, value in vars(module).items()
        if attribute.endswith("_PHASE") and isinstance(value, str)
    }

    # Execute
    declared = {phase.name for phase in (*GENERIC_PHASES, *algorithm_entry(name).metrics.phases)}

    # Assert
    assert constants <= declared
