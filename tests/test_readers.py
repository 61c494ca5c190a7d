"""Benchmark readers: Symbolic-MoE JSON, GSM8K JSONL and the generic JSONL; detection, the
--format override, and errors that name the file, the line or index and the field."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from orchestrator.benchmarks.readers import FORMATS, detect_format, read_benchmark
from orchestrator.errors import BenchmarkFormatError, UserError

from .conftest import ROOT, SHARED_DATA

BENCHMARKS = SHARED_DATA / "benchmarks"

SMOE_ITEMS = [
    {"question": "Find the remainder when 2^10 is divided by 7.", "gold_answer": "2"},
    {"question": "Which gas is used in anesthesia? The options are: (A) O2 (B) N2O (C) CO (D) He",
     "gold_answer": "B", "category": "medicine"},
    {"question": "How many primes are below 20?", "gold_answer": 8},
]

GSM8K_ROWS = [
    {"question": "Janet's ducks lay 16 eggs per day...",
     "answer": "She has 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"},
    {"question": "A shop sells 1,234 pens a week. How many in a week?",
     "answer": "It sells 1,234 pens.\n#### 1,234"},
]

JSONL_ROWS = [
    {"id": "q1", "question": "What is the least common multiple of 4 and 10?", "gold": "B",
     "options": ["100", "20", "14", "40"], "domain": "math", "source": "mmlu_pro"},
    {"id": 2, "question": "How many girls are in the school?", "gold": "360", "domain": "math"},
    {"id": "q3", "question": "Name the capital of France.", "gold": "Paris"},
    {"id": "q4", "question": "An unscored question."},
]


def write_json(path, data):
    path.write_text(json.dumps(data, indent=2))
    return path


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- the three formats -----------------------------------------------------------------------


def test_symbolic_moe_json(tmp_path):
    path = write_json(tmp_path / "aime.json", SMOE_ITEMS)
    assert detect_format(path) == "symbolic-moe"
    queries = read_benchmark(path)
    assert [q.id for q in queries] == ["aime-0", "aime-1", "aime-2"]
    assert [q.gold for q in queries] == ["2", "B", "8"]
    assert [q.answer_type for q in queries] == ["numeric", "choice", "numeric"]
    assert [q.domain for q in queries] == [None, "medicine", None]
    assert queries[1].question == SMOE_ITEMS[1]["question"]


def test_gsm8k_jsonl_takes_the_value_after_the_marker(tmp_path):
    path = write_lines(tmp_path / "gsm.jsonl", [GSM8K_ROWS[0], "", GSM8K_ROWS[1]])
    assert detect_format(path) == "gsm8k"
    queries = read_benchmark(path)
    assert [q.gold for q in queries] == ["18", "1234"]
    # ids follow the file's line numbers, blank lines included
    assert [q.id for q in queries] == ["gsm-1", "gsm-3"]
    assert {q.answer_type for q in queries} == {"numeric"}
    assert {q.domain for q in queries} == {"math"}


def test_generic_jsonl(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", JSONL_ROWS)
    assert detect_format(path) == "jsonl"
    q1, q2, q3, q4 = read_benchmark(path)
    assert (q1.id, q1.gold, q1.options, q1.domain, q1.answer_type) == (
        "q1", "B", ("100", "20", "14", "40"), "math", "choice")
    assert q1.meta["source"] == "mmlu_pro"
    assert (q2.id, q2.gold, q2.answer_type) == ("2", "360", "numeric")
    assert (q3.gold, q3.answer_type, q3.options, q3.domain) == ("Paris", "text", (), None)
    assert q4.gold is None


def test_generic_jsonl_numeric_gold(tmp_path):
    path = write_lines(tmp_path / "nums.jsonl", [
        {"id": "a", "question": "6 * 7?", "gold": 42},
        {"id": "b", "question": "Half of 5?", "gold": 2.5},
    ])
    queries = read_benchmark(path)
    assert [(q.gold, q.answer_type) for q in queries] == [("42", "numeric"), ("2.5", "numeric")]


def test_choice_inferred_from_inline_options(tmp_path):
    path = write_lines(tmp_path / "inline.jsonl", [
        {"id": "a", "question": "Pick one. The options are: (A) red (B) blue", "gold": "B"},
        {"id": "b", "question": "Pick one. The options are: (A) red (B) blue"},
    ])
    assert [q.answer_type for q in read_benchmark(path)] == ["choice", "choice"]


def test_long_first_line_is_detected(tmp_path):
    row = {"id": "long", "question": "Read this passage. " + "word " * 2000, "gold": "C",
           "options": ["a", "b", "c"]}
    path = write_lines(tmp_path / "long.jsonl", [row])
    assert detect_format(path) == "jsonl"
    assert read_benchmark(path)[0].gold == "C"


def test_limit_keeps_the_first_questions_after_validating_all(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", JSONL_ROWS)
    assert [q.id for q in read_benchmark(path, limit=2)] == ["q1", "2"]
    bad = write_lines(tmp_path / "bad.jsonl", [*JSONL_ROWS, {"question": "no id"}])
    with pytest.raises(BenchmarkFormatError, match="line 5: missing field 'id'"):
        read_benchmark(bad, limit=1)
    with pytest.raises(BenchmarkFormatError, match="--limit must be at least 1"):
        read_benchmark(path, limit=0)


# --- --format override -----------------------------------------------------------------------


def test_explicit_format_matches_detection(tmp_path):
    files = {
        "symbolic-moe": write_json(tmp_path / "s.json", SMOE_ITEMS),
        "gsm8k": write_lines(tmp_path / "g.jsonl", GSM8K_ROWS),
        "jsonl": write_lines(tmp_path / "j.jsonl", JSONL_ROWS),
    }
    for fmt, path in files.items():
        assert read_benchmark(path, fmt) == read_benchmark(path, "auto")


@pytest.mark.parametrize("fmt, rows, message", [
    pytest.param("jsonl", GSM8K_ROWS, "line 1: missing field 'id'", id="gsm8k-file-as-jsonl"),
    pytest.param("gsm8k", JSONL_ROWS, "line 1: missing field 'answer'", id="jsonl-file-as-gsm8k"),
    pytest.param("symbolic-moe", JSONL_ROWS, "line 2: not valid JSON", id="jsonl-file-as-smoe"),
    pytest.param("symbolic-moe", JSONL_ROWS[:1], "expected a JSON list", id="one-line-as-smoe"),
])
def test_explicit_format_overrides_detection(tmp_path, fmt, rows, message):
    path = write_lines(tmp_path / "bench.jsonl", rows)
    read_benchmark(path)  # readable as detected
    with pytest.raises(BenchmarkFormatError, match=message):
        read_benchmark(path, fmt)


def test_answer_field_with_marker_and_an_id_is_gsm8k_unless_gold_is_given(tmp_path):
    rows = [{"id": "x", "question": "Q?", "answer": "1 + 1 = 2\n#### 2"}]
    assert detect_format(write_lines(tmp_path / "a.jsonl", rows)) == "gsm8k"
    rows = [{"id": "x", "question": "Q?", "answer": "#### 2", "gold": "2"}]
    assert detect_format(write_lines(tmp_path / "b.jsonl", rows)) == "jsonl"


def test_unknown_format_lists_the_available_ones(tmp_path):
    path = write_lines(tmp_path / "j.jsonl", JSONL_ROWS)
    with pytest.raises(BenchmarkFormatError, match="Unknown benchmark format 'csv'") as err:
        read_benchmark(path, "csv")
    for name in FORMATS:
        assert name in str(err.value)
    assert isinstance(err.value, UserError)


def test_missing_file(tmp_path):
    with pytest.raises(BenchmarkFormatError, match="does not exist"):
        read_benchmark(tmp_path / "nope.jsonl")


# --- malformed files -------------------------------------------------------------------------


@pytest.mark.parametrize("items, where, field", [
    pytest.param([SMOE_ITEMS[0], {"question": "Q?"}], "index 1", "gold_answer", id="no-gold"),
    pytest.param([{"gold_answer": "3"}], "index 0", "question", id="no-question"),
    pytest.param([SMOE_ITEMS[0], SMOE_ITEMS[1], {"question": "  ", "gold_answer": "1"}],
                 "index 2", "question", id="blank-question"),
    pytest.param([{"question": "Q?", "gold_answer": True}], "index 0", "gold_answer",
                 id="boolean-gold"),
    pytest.param([SMOE_ITEMS[0], "just text"], "index 1", "JSON object", id="item-not-object"),
])
def test_symbolic_moe_errors_name_file_index_and_field(tmp_path, items, where, field):
    path = write_json(tmp_path / "bad.json", items)
    with pytest.raises(BenchmarkFormatError) as err:
        read_benchmark(path)
    message = str(err.value)
    assert str(path) in message
    assert f"{where}:" in message
    assert field in message


@pytest.mark.parametrize("fmt, rows, where, field", [
    pytest.param("jsonl", [JSONL_ROWS[0], {"question": "Q?"}], "line 2", "'id'", id="jsonl-no-id"),
    pytest.param("jsonl", [JSONL_ROWS[0], JSONL_ROWS[1], {"id": "z"}], "line 3", "'question'",
                 id="jsonl-no-question"),
    pytest.param("jsonl", [{"id": "a", "question": "Q?", "gold": ["B"]}], "line 1", "'gold'",
                 id="jsonl-gold-list"),
    pytest.param("jsonl", [{"id": "a", "question": "Q?", "gold": True}], "line 1", "'gold'",
                 id="jsonl-gold-boolean"),
    pytest.param("jsonl", [{"id": "a", "question": "Q?", "options": "A) x B) y"}], "line 1",
                 "'options'", id="jsonl-options-not-list"),
    pytest.param("jsonl", [{"id": "a", "question": "Q?", "options": list("abcdefghijk")}],
                 "line 1", "'options' has 11 entries", id="jsonl-too-many-options"),
    pytest.param("gsm8k", [GSM8K_ROWS[0], {"question": "Q?"}], "line 2", "'answer'",
                 id="gsm8k-no-answer"),
    pytest.param("gsm8k", [GSM8K_ROWS[0], {"question": "Q?", "answer": "It is 4."}], "line 2",
                 "'####'", id="gsm8k-no-marker"),
    pytest.param("gsm8k", [GSM8K_ROWS[0], {"answer": "#### 4"}], "line 2", "'question'",
                 id="gsm8k-no-question"),
])
def test_jsonl_errors_name_file_line_and_field(tmp_path, fmt, rows, where, field):
    path = write_lines(tmp_path / "bad.jsonl", rows)
    for given in ("auto", fmt):
        with pytest.raises(BenchmarkFormatError) as err:
            read_benchmark(path, given)
        message = str(err.value)
        assert str(path) in message
        assert f"{where}:" in message
        assert field in message


@pytest.mark.parametrize("rows, where", [
    pytest.param([JSONL_ROWS[0], '{"id": "q2", "question": "Q?",}'], "line 2", id="jsonl"),
    pytest.param([GSM8K_ROWS[0], GSM8K_ROWS[1], "{bad json"], "line 3", id="gsm8k"),
    pytest.param(["not json at all", JSONL_ROWS[0]], "line 1", id="first-line"),
])
def test_invalid_json_line(tmp_path, rows, where):
    path = write_lines(tmp_path / "bad.jsonl", rows)
    with pytest.raises(BenchmarkFormatError, match="not valid JSON") as err:
        read_benchmark(path)
    assert str(path) in str(err.value)
    assert f"{where}:" in str(err.value)


def test_invalid_json_file_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"question": "a", "gold_answer": "1"},\n  {"question": "b" "gold_answer": "2"}\n]')
    with pytest.raises(BenchmarkFormatError, match=r"bad\.json: line 3: not valid JSON"):
        read_benchmark(path)


def test_line_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [JSONL_ROWS[0], "42"])
    with pytest.raises(BenchmarkFormatError, match="line 2: each line must be a JSON object"):
        read_benchmark(path)


def test_duplicate_ids(tmp_path):
    path = write_lines(tmp_path / "dup.jsonl", [JSONL_ROWS[0], {**JSONL_ROWS[2], "id": "q1"}])
    with pytest.raises(BenchmarkFormatError, match="id 'q1' appears twice"):
        read_benchmark(path)


@pytest.mark.parametrize("name, content", [
    pytest.param("empty.jsonl", "", id="empty-jsonl"),
    pytest.param("blank.jsonl", "\n  \n\n", id="only-blank-lines"),
    pytest.param("empty.json", "", id="empty-json"),
    pytest.param("list.json", "[]", id="empty-list"),
])
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(BenchmarkFormatError, match="holds no questions") as err:
        read_benchmark(path)
    assert str(path) in str(err.value)


# --- real files ------------------------------------------------------------------------------


def test_demo_sample():
    queries = read_benchmark(ROOT / "samples" / "demo.jsonl")
    assert len(queries) == 36
    assert len({q.id for q in queries}) == 36
    by_source = Counter(q.meta["source"] for q in queries)
    assert by_source == {"gsm8k": 12, "mmlu_pro": 12, "medmcqa": 12}
    for q in queries:
        assert q.gold
        if q.meta["source"] == "gsm8k":
            assert q.answer_type == "numeric"
            assert not q.options
            int(q.gold)
        else:
            assert q.answer_type == "choice"
            # the gold letter names one of the listed options
            assert "ABCDEFGHIJ".index(q.gold) < len(q.options)
    assert [q.id for q in read_benchmark(ROOT / "samples" / "demo.jsonl", limit=3)] == [
        q.id for q in queries[:3]]


SHARED_FILES = [
    ("aime24_test.json", "symbolic-moe", 30, {"numeric"}),
    ("gsm8k_test.jsonl", "gsm8k", 1319, {"numeric"}),
    ("medmcqa_dev.json", "symbolic-moe", 4183, {"choice"}),
    ("mmlu_pro_test.json", "symbolic-moe", 2100, {"choice"}),
]


@pytest.mark.parametrize("name, fmt, count, types", [pytest.param(*f, id=f[0]) for f in SHARED_FILES])
def test_shared_benchmarks(name, fmt, count, types):
    path = BENCHMARKS / name
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    assert detect_format(path) == fmt
    queries = read_benchmark(path)
    assert len(queries) == count
    assert {q.answer_type for q in queries} == types
    for q in queries:
        assert q.gold
        if q.answer_type == "choice":
            # Symbolic-MoE writes the options into the question: "(A) ... (B) ..."
            assert f"({q.gold})" in q.question
        else:
            float(q.gold)
