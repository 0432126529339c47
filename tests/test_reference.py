"""docs/fields.md holds the generator's output, and the README's minimal scenario passes every check."""

from __future__ import annotations

from pathlib import Path

from fedbrick_flower.preflight import check_scenario
from fedbrick_flower.reference import field_reference, marked_reference
from fedbrick_flower.registry import algorithm_names, algorithm_parameters
from fedbrick_flower.scenario import SCENARIO_KEYS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIELDS = ROOT / "docs" / "fields.md"


def test_docs_field_reference_matches_the_code() -> None:
    # Assert (regenerate with: fedbrick-flower fields --update docs/fields.md)
    assert marked_reference(FIELDS.read_text()) == field_reference()


def test_reference_lists_every_key_and_algorithm_parameter() -> None:
    # Execute
    text = field_reference()

    # Assert
    for key in SCENARIO_KEYS:
        assert f"| `{key}` |" in text
    for name in algorithm_names():
        assert f"`{name}`: " in text
        for parameter in algorithm_parameters(name):
            assert f"| `{parameter}` |" in text
    assert "| `dirichlet_alpha` | float | 0.5 | > 0 |" in text
    assert "| `fraction_train` | float | 1.0 | in (0, 1] |" in text


def test_readme_minimal_scenario_passes_on_a_cpu_machine(tmp_path: Path) -> None:
    # Prepare: the YAML block after "A minimal scenario", as a user copies it
    text = README.read_text()
    start = text.index("```yaml", text.index("A minimal scenario")) + len("```yaml\n")
    path = tmp_path / "minimal.yaml"
    path.write_text(text[start : text.index("```", start)])

    # Execute
    scenario = check_scenario(str(path), local_clients=True)

    # Assert
    assert {c.device for c in scenario.clients} <= {"auto", "cpu"}
    assert {c.dtype for c in scenario.clients} <= {"auto", "float32"}
    assert scenario.train.lr == 0.0005
