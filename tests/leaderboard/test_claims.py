"""The claims table: verdicts from compare.json files, "not run" without one, and the docs' copy up to date."""

from __future__ import annotations

import json
from pathlib import Path

from fedbrick_flower.leaderboard import claims
from fedbrick_flower.leaderboard.claims import BEGIN, END, Claim, claim_rows, claims_table, evaluate_claim

ROOT = Path(__file__).resolve().parents[2]


def _record(methods: dict[str, dict[int, dict]]) -> dict:
    return {
        "methods": {
            name: {"per_seed": {str(s): f for s, f in seeds.items()}, "status": "finished"}
            for name, seeds in methods.items()
        }
    }


def test_claim_against_the_best_baseline_by_hand() -> None:
    # Prepare: b2 is the better baseline (mean 0.70); m - b2 = +4, +6, +5 points -> mean 5, s 1
    record = _record(
        {
            "m": {s: {"global_accuracy": v} for s, v in enumerate((0.74, 0.76, 0.75))},
            "b1": {s: {"global_accuracy": 0.5} for s in range(3)},
            "b2": {s: {"global_accuracy": 0.70} for s in range(3)},
        }
    )
    claim = Claim("m beats the best by 2", "toy", "m", ("b1", "b2"), target=2.0)

    # Execute
    row = evaluate_claim(claim, record, "x/compare.json")

    # Assert: 5 +- 4.3027 / sqrt(3) = [2.52, 7.48] lies above 2
    assert row["verdict"] == "met"
    assert row["interval"] == "+5.00 [+2.52, +7.48] vs b2 (n=3)"


def test_bound_claim_and_missing_pieces() -> None:
    # Prepare
    record = _record({"m": {0: {"summary": {"overhead": 0.012}}, 1: {"summary": {"overhead": 0.02}}}})

    # Execute
    bound = evaluate_claim(Claim("small", "toy", "m", metric="overhead", bound=0.0144), record, "f")
    missing = evaluate_claim(Claim("other", "toy", "m", ("b",), metric="others"), record, "f")
    not_run = evaluate_claim(Claim("x", "toy", "m", ("b",)), None, "f")

    # Assert
    assert bound["verdict"] == "not met" and "2.00 %" in bound["interval"]
    assert missing["verdict"] == "not measured"
    assert not_run["verdict"] == "not run"


def test_rows_read_the_suites_compare_files(tmp_path: Path) -> None:
    # Prepare: only the 2-of-6 suite has results, and FedBRICK trails FedRA there
    folder = tmp_path / "powered-depth-2of6"
    folder.mkdir()
    fedbrick = {s: {"global_accuracy": 0.70 + 0.001 * s} for s in range(5)}
    fedra = {s: {"global_accuracy": 0.72} for s in range(5)}
    (folder / "compare.json").write_text(json.dumps(_record({"fedbrick": fedbrick, "fedra": fedra})))

    # Execute
    rows = {row["claim"]: row for row in claim_rows(tmp_path)}

    # Assert
    assert rows["FedBRICK - FedRA >= +10 points, 2 of 6 layers"]["verdict"] == "not met"
    assert rows["FedBRICK - FedRA >= +2 points, mixed budgets"]["verdict"] == "not run"
    assert len(rows) == len(claims.CLAIMS)


def test_docs_hold_the_generated_tables() -> None:
    # Assert (regenerate with: python -m fedbrick_flower.leaderboard.claims --update docs/results.md README.md)
    rows = claim_rows(ROOT / "bench" / "results")
    results = (ROOT / "docs" / "results.md").read_text()
    readme = (ROOT / "README.md").read_text()
    assert results.split(BEGIN)[1].split(END)[0].strip() == claims_table(rows).replace(str(ROOT) + "/", "")
    assert claims.short_table(rows) in readme
