"""train/report.py's headline figures on hand-made reports whose answers are known, and the
README block it writes."""

import sys
from pathlib import Path

import pytest

from clear_learn.evaluation import EvalReport

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))
import report  # noqa: E402


def _report(acc: dict[str, list[float]], budgets=(32, 64, 128)) -> EvalReport:
    rows = {}
    for name, accs in acc.items():
        rows[name] = []
        for b, a in zip(budgets, accs):
            u, o = acc["uniform"][budgets.index(b)], acc["oracle"][budgets.index(b)]
            rows[name].append({"budget_per_query": b, "mean_accuracy": a,
                               "ratio_to_uniform": a / u if u > 0 else float("inf"),
                               "gap_closed": (a - u) / (o - u) if o - u > 0 else float("nan")})
    return EvalReport(rows=rows, budgets_per_query=list(budgets), n_queries=10)


def test_headline_skips_budgets_where_uniform_is_a_few_lucky_rollouts():
    rep = _report({"uniform": [0.01, 0.10, 0.40], "clear-learned": [0.20, 0.35, 0.50],
                   "oracle": [0.30, 0.45, 0.60], "optimum": [0.30, 0.50, 0.60]})
    h = report.headline(rep)
    assert h["scarcest_budget"] == 64  # 0.01 < MIN_UNIFORM: not the scarcest fair budget
    assert h["ratio_at_scarcest"]["clear-learned"] == pytest.approx(3.5)
    assert h["accuracy_at_scarcest"]["uniform"] == pytest.approx(0.10)
    assert h["best_ratio"]["clear-learned"] == (pytest.approx(3.5), 64, pytest.approx(4.5))
    assert h["mean_gap_closed"]["clear-learned"] == pytest.approx(
        ((0.35 - 0.10) / 0.35 + (0.50 - 0.40) / 0.20 + (0.20 - 0.01) / 0.29) / 3)
    assert h["oracle_vs_optimum"] == pytest.approx((1 + 0.9 + 1) / 3)


def test_headline_table_says_where_the_papers_3x_is_reached_and_where_not():
    result = {"protocols": {}}
    for key, learned in (("a", [0.20, 0.35, 0.50]), ("b", [0.02, 0.12, 0.41])):
        rep = _report({"uniform": [0.01, 0.10, 0.40], "clear-learned": learned,
                       "oracle": [0.30, 0.45, 0.60]})
        result["protocols"][key] = {"headline": report.headline(rep)}
    lines = report.headline_table(result)
    assert "reaches the paper's 3x over uniform on a at 64" in lines[-1]
    del result["protocols"]["a"]
    assert "does not reach the paper's 3x" in report.headline_table(result)[-1]


def test_the_oracle_is_quoted_at_the_learned_policys_best_budget_not_its_own():
    rep = _report({"uniform": [0.01, 0.10, 0.20], "clear-learned": [0.20, 0.30, 0.70],
                   "oracle": [0.30, 0.60, 0.75]})
    h = report.headline(rep)
    assert h["best_ratio"]["clear-learned"] == (pytest.approx(3.5), 128, pytest.approx(3.75))
    assert h["best_ratio"]["oracle"][:2] == (pytest.approx(6.0), 64)  # its own best elsewhere
    line = report.headline_table({"protocols": {"a": {"headline": h}}})[-1]
    assert "on a at 128 tokens per query (oracle 3.8x there): 3.5x" in line


def test_readme_block_is_replaced_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    begin, end = report.MARKERS
    readme.write_text(f"# T\n\nbefore\n{begin}\nold figures\n{end}\nafter\n")
    rep = _report({"uniform": [0.01, 0.10, 0.40], "clear-learned": [0.20, 0.35, 0.50],
                   "oracle": [0.30, 0.45, 0.60]})
    result = {"command": "python train/report.py --folds x", "n_queries": 10,
              "n_families": 2, "protocols": {"p": {"headline": report.headline(rep)}}}
    report.update_readme(result, "docs/report", readme)
    text = readme.read_text()
    assert "old figures" not in text and text.startswith("# T\n\nbefore\n")
    assert text.endswith(f"{end}\nafter\n") and "| p | 0." in text
    report.update_readme(result, "docs/report", readme)  # idempotent
    assert readme.read_text() == text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no results markers"):
        report.update_readme(result, "docs/report", readme)
