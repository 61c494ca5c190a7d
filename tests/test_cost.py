"""The cost view (calls, tokens, money from manifest prices) and the stages of a run's time."""

from __future__ import annotations

import json

import pytest

from orchestrator.accounting import stage_record
from orchestrator.cli.render import cost_lines, stage_lines
from orchestrator.config import load_pool
from orchestrator.core import Orchestrator
from orchestrator.errors import ConfigError
from orchestrator.outputs import write_run
from orchestrator.report.markdown import summary_rows
from orchestrator.types import Query

from .conftest import write_pool

PRICES = {"a": {"input_per_mtok": 0.15, "output_per_mtok": 0.60},
          "b": {"input_per_mtok": 1.0, "output_per_mtok": 4.0},
          "agg": {"input_per_mtok": 2.0, "output_per_mtok": 8.0}}
QUESTIONS = [Query(f"q{i}", f"What is {i} + 42 - {i}?", "42", answer_type="numeric")
             for i in range(4)]


def pool(tmp_path, priced=("a", "b", "agg")):
    replies = {"a": "The answer is 41", "b": "The answer is 43",
               "agg": "Weighing both, the answer is 42"}
    experts = [{"id": e, "backend": "fake", "options": {"default": text},
                **({"price": PRICES[e]} if e in priced else {})} for e, text in replies.items()]
    return write_pool(tmp_path / "pool.yaml", experts)


def summary_of(tmp_path, path, **overrides):
    with Orchestrator.from_files(path, router="fixed", experts=["a", "b"], **overrides) as orch:
        result = orch.evaluate(QUESTIONS)
    return write_run(tmp_path / "out", result), result


def test_money_per_question_from_the_manifest_prices_aggregator_included(tmp_path):
    summary, result = summary_of(tmp_path, pool(tmp_path), aggregator="fuse",
                                 aggregator_expert="agg", escalation={"mode": "none"})
    cost = summary["cost"]
    expected = 0.0
    for a in result.answers:
        for o in a.outputs:
            p = PRICES[o.expert]
            expected += (o.tokens_in * p["input_per_mtok"] + o.tokens_out * p["output_per_mtok"]) / 1e6
    agg = result.stats.experts["agg"]  # the fused generations, counted by the executor
    expected += (agg.tokens_in * 2.0 + agg.tokens_out * 8.0) / 1e6
    assert cost["money"] == pytest.approx(expected, rel=1e-4)
    assert cost["money_per_question"] == pytest.approx(expected / 4, rel=1e-4)
    assert cost["calls"] == 12 and cost["calls_per_question"] == 3.0  # 2 experts + the fusion
    assert cost["aggregator_calls"] == 4 and cost["per_expert"]["agg"]["calls"] == 4
    assert cost["per_expert"]["agg"]["tokens_in"] == agg.tokens_in > 0
    total_in = sum(s.tokens_in for s in result.stats.experts.values())
    assert cost["tokens_in_per_question"] == pytest.approx(total_in / 4, abs=0.1)
    rows = dict(summary_rows(summary))
    assert rows["expert calls per question"].startswith("3.00")
    assert "per question" in rows["money (manifest prices)"]
    assert "money" in cost_lines(summary)[0]
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["cost"] == cost


def test_money_is_unknown_when_an_expert_called_has_no_price(tmp_path):
    summary, _ = summary_of(tmp_path, pool(tmp_path, priced=("a",)),
                            escalation={"mode": "none"})
    cost = summary["cost"]
    assert cost["money"] is None and cost["unpriced"] == ["b"]
    assert cost["calls_per_question"] == 2.0
    assert "no price in the manifest for b" in dict(summary_rows(summary))["money"]
    summary, _ = summary_of(tmp_path, pool(tmp_path, priced=()))
    assert summary["cost"]["money"] is None and summary["cost"]["unpriced"] == []
    assert "money" not in dict(summary_rows(summary)) and "money" not in cost_lines(summary)[0]


def test_a_misspelt_price_is_refused(tmp_path):
    experts = [{"id": "a", "backend": "fake", "price": {"input_per_mtok": 1.0,
                                                        "output_per_mtoken": 2.0}}]
    with pytest.raises(ConfigError, match="output_per_mtok"):
        load_pool(write_pool(tmp_path / "pool.yaml", experts))


def test_stages_account_for_the_wall_time(tmp_path):
    summary, result = summary_of(tmp_path, pool(tmp_path), aggregator="fuse",
                                 aggregator_expert="agg")
    stages = summary["stages"]
    assert list(stages) == ["annotate_s", "route_s", "load_s", "generate_s", "aggregate_s"]
    assert sum(stages.values()) + summary["overhead_s"] == pytest.approx(result.wall_s, abs=2e-3)
    assert summary["overhead_share"] * result.wall_s == pytest.approx(summary["overhead_s"],
                                                                      abs=1e-3)
    assert "stage: load models" in dict(summary_rows(summary))
    lines = stage_lines(summary)
    assert "orchestrator's own time" in lines[0] and lines[1].startswith("stages     annotate")


def test_loads_are_taken_out_of_the_stages_they_happened_in():
    walls = {"annotate_s": 59.8, "route_s": 0.01, "generate_s": 2.0, "aggregate_s": 4.0}
    got = stage_record(walls, 3.0)
    assert got == pytest.approx({"annotate_s": 59.8, "route_s": 0.01, "load_s": 3.0,
                                 "generate_s": 0.0, "aggregate_s": 3.0})
    assert sum(got.values()) == pytest.approx(sum(walls.values()))  # nothing counted twice
    # loads of parallel placements overlap: never more than the stages they ran in
    assert stage_record(walls, 100.0)["load_s"] == pytest.approx(6.0)
