"""Benchmark loading: the shared reference JSON files, GPQA shuffling, errors, the offline hub."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.core.types import Problem
from orchestrator.driver.data import (
    BENCHMARKS,
    DatasetError,
    HubUnavailableError,
    gpqa_shuffle,
    load_problems,
)

EVAL_DIR = (Path(__file__).resolve().parents[2] / "../shared/data/leap_eval").resolve()

SHARED = [("aime24", "aime.json", 30), ("aime25", "aime_2025.json", 30), ("aimo25", "aimo.json", 10)]


def _shared(file: str) -> Path:
    p = EVAL_DIR / file
    if not p.is_file():
        pytest.skip(f"reference eval set not found: {p}")
    return p


@pytest.mark.parametrize("name,file,total", SHARED)
def test_shared_files_load(name, file, total):
    path = _shared(file)
    everything = load_problems(name, path=str(path))
    assert len(everything) == total
    ids = [p.id for p in everything]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, str) and i for i in ids)
    for p in everything:
        assert isinstance(p, Problem)
        assert p.benchmark == name and p.kind == "math"
        assert p.gold.strip() and p.question.strip()
    # limit keeps the first N, and ids are stable between loads
    first = load_problems(name, path=str(path), limit=5)
    assert [p.id for p in first] == ids[:5]
    assert load_problems(name, path=str(path), limit=5) == first


def test_shared_ids_follow_the_files():
    aime = load_problems("aime24", path=str(_shared("aime.json")), limit=2)
    raw = json.loads(_shared("aime.json").read_text())[0]
    assert aime[0].id == f"{raw['year']}-{raw['aime_number']}-{raw['problem_number']}"
    assert aime[0].gold == str(raw["answer"]).strip()
    assert aime[0].question == raw["problem"].strip()  # the problem text only, never the solution
    assert load_problems("aime25", path=str(_shared("aime_2025.json")), limit=1)[0].id == "I-1"
    aimo = load_problems("aimo25", path=str(_shared("aimo.json")), limit=1)[0]
    assert aimo.id == json.loads(_shared("aimo.json").read_text())[0]["id"]
    assert aimo.gold.isdigit()  # integer answers become their digit strings


def test_synthetic():
    probs = load_problems("synthetic")
    assert 4 <= len(probs) <= 10
    assert len({p.id for p in probs}) == len(probs)
    for p in probs:
        assert p.benchmark == "synthetic" and p.kind == "math"
        int(p.gold)  # known integer answers
    assert load_problems("synthetic", limit=2) == probs[:2]


def test_unknown_benchmark():
    with pytest.raises(ValueError) as exc:
        load_problems("gsm8k")
    msg = str(exc.value)
    assert "gsm8k" in msg
    for name in ("aime24", "aime25", "aimo25", "gpqa_diamond", "synthetic"):
        assert name in msg
    assert set(BENCHMARKS) == {"aime24", "aime25", "aimo25", "gpqa_diamond", "synthetic"}


# ------------------------------------------------------------------------------------------ GPQA


def _gpqa_rows(n: int = 12) -> list[dict]:
    # Idavidrein/gpqa layout: the correct option sits in its own column (and first, in public copies).
    return [
        {
            "Record ID": f"rec{i:03d}",
            "Question": f"Question number {i}: which option is right?",
            "Correct Answer": f"right {i}",
            "Incorrect Answer 1": f"wrong {i}a",
            "Incorrect Answer 2": f"wrong {i}b",
            "Incorrect Answer 3": f"wrong {i}c",
            "Subdomain": "Physics",
        }
        for i in range(n)
    ]


def _write(rows: list[dict], path: Path) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


def _options(question: str) -> dict[str, str]:
    lines = question.splitlines()
    return {ln[0]: ln[3:] for ln in lines if len(ln) > 3 and ln[0] in "ABCD" and ln[1:3] == ") "}


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".json"])
def test_gpqa_shuffle_from_file(tmp_path, suffix):
    rows = _gpqa_rows()
    f = _write(rows, tmp_path / f"gpqa{suffix}")
    probs = load_problems("gpqa_diamond", path=str(f), seed=0)
    assert [p.id for p in probs] == [r["Record ID"] for r in rows]
    for p, r in zip(probs, rows):
        assert p.kind == "gpqa" and p.benchmark == "gpqa_diamond"
        assert p.question.startswith(r["Question"])
        opts = _options(p.question)
        assert sorted(opts) == ["A", "B", "C", "D"]
        assert sorted(opts.values()) == sorted(
            r[c] for c in ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
        )
        assert p.gold in "ABCD" and opts[p.gold] == r["Correct Answer"]
    # the shuffle matters: the correct option is not always "A"
    assert len({p.gold for p in probs}) > 1
    # deterministic per seed
    assert load_problems("gpqa_diamond", path=str(f), seed=0) == probs
    other = load_problems("gpqa_diamond", path=str(f), seed=1)
    assert [p.question for p in other] != [p.question for p in probs]
    for p, r in zip(other, rows):
        assert _options(p.question)[p.gold] == r["Correct Answer"]


def test_gpqa_same_rows_any_format(tmp_path):
    rows = _gpqa_rows(5)
    a = load_problems("gpqa_diamond", path=str(_write(rows, tmp_path / "g.parquet")), seed=7)
    b = load_problems("gpqa_diamond", path=str(_write(rows, tmp_path / "g.jsonl")), seed=7)
    assert a == b


def test_gpqa_shuffle_is_stable_and_covers_all_orders():
    text, gold = gpqa_shuffle("Q?", "yes", ["n1", "n2", "n3"], seed=3, qid="x")
    assert (text, gold) == gpqa_shuffle("Q?", "yes", ["n1", "n2", "n3"], seed=3, qid="x")
    golds = {gpqa_shuffle("Q?", "yes", ["n1", "n2", "n3"], seed=s, qid="x")[1] for s in range(64)}
    assert golds == set("ABCD")


def test_gpqa_prerendered_letter_answers(tmp_path):
    f = _write([{"id": "q1", "question": "Pick.\nA) 1\nB) 2\nC) 3\nD) 4", "answer": "(c)"}], tmp_path / "p.json")
    (p,) = load_problems("gpqa_diamond", path=str(f))
    assert p.gold == "C" and p.question.startswith("Pick.")


# ---------------------------------------------------------------------------------------- errors


def test_missing_question_column_names_file_and_row(tmp_path):
    f = _write([{"problem": "1+1?", "answer": "2"}, {"text": "2+2?", "answer": "4"}], tmp_path / "bad.jsonl")
    with pytest.raises(DatasetError) as exc:
        load_problems("aime24", path=str(f))
    msg = str(exc.value)
    assert str(f) in msg and "row 1" in msg and "question" in msg


def test_empty_answer_names_file_and_row(tmp_path):
    rows = [{"id": "a", "problem": "1+1?", "answer": "2"}, {"id": "b", "problem": "2+2?", "answer": "4"},
            {"id": "c", "problem": "3+3?", "answer": "  "}]
    f = _write(rows, tmp_path / "bad.parquet")
    with pytest.raises(DatasetError) as exc:
        load_problems("aime25", path=str(f))
    msg = str(exc.value)
    assert str(f) in msg and "row 2" in msg and "empty answer" in msg


def test_missing_answer_column_and_solution_is_not_an_answer(tmp_path):
    f = _write([{"problem": "1+1?", "solution": "It is \\boxed{2}."}], tmp_path / "sol.json")
    with pytest.raises(DatasetError) as exc:
        load_problems("aimo25", path=str(f))
    assert str(f) in str(exc.value) and "row 0" in str(exc.value) and "answer" in str(exc.value)


def test_gpqa_missing_option_names_file_and_row(tmp_path):
    rows = _gpqa_rows(3)
    del rows[2]["Incorrect Answer 3"]
    f = _write(rows, tmp_path / "gpqa.jsonl")
    with pytest.raises(DatasetError) as exc:
        load_problems("gpqa_diamond", path=str(f))
    msg = str(exc.value)
    assert str(f) in msg and "row 2" in msg and "Incorrect Answer 3" in msg


def test_duplicate_ids_and_bad_files(tmp_path):
    f = _write([{"id": "x", "problem": "a", "answer": "1"}, {"id": "x", "problem": "b", "answer": "2"}],
               tmp_path / "dup.json")
    with pytest.raises(DatasetError, match="row 1.*duplicate"):
        load_problems("aime24", path=str(f))
    g = tmp_path / "broken.jsonl"
    g.write_text('{"problem": "a", "answer": "1"}\n{not json\n')
    with pytest.raises(DatasetError) as exc:
        load_problems("aime24", path=str(g))
    assert str(g) in str(exc.value) and "row 1" in str(exc.value)
    with pytest.raises(DatasetError, match="no such file"):
        load_problems("aime24", path=str(tmp_path / "missing.json"))
    h = tmp_path / "data.txt"
    h.write_text("x")
    with pytest.raises(DatasetError, match="unsupported"):
        load_problems("aime24", path=str(h))


def test_row_index_ids_when_no_id_column(tmp_path):
    f = _write([{"Question": "q0", "Answer": 3.0}, {"Question": "q1", "Answer": 4.5}], tmp_path / "x.parquet")
    probs = load_problems("aime24", path=str(f))
    assert [p.id for p in probs] == ["0", "1"]
    assert [p.gold for p in probs] == ["3", "4.5"]


@pytest.mark.parametrize("answer, shown", [
    (["5"], "a list (['5'])"),
    ({"value": 5}, "a dict ({'value': 5})"),
    (True, "a boolean (True)"),
])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_answers_that_are_not_a_string_or_number_are_refused(tmp_path, suffix, answer, shown):
    rows = [{"id": "a", "problem": "1+1?", "answer": "2"}, {"id": "b", "problem": "2+2?", "answer": answer}]
    f = _write(rows, tmp_path / f"bad{suffix}")
    with pytest.raises(DatasetError) as exc:
        load_problems("aime24", path=str(f))
    msg = str(exc.value)
    assert msg.startswith(f"{f}: row 1: column 'answer' holds {shown}"), msg
    assert "must hold a string or a number" in msg


def test_a_null_or_nan_answer_is_refused_by_row(tmp_path):
    f = _write([{"problem": "1+1?", "answer": None}], tmp_path / "null.json")
    with pytest.raises(DatasetError, match=r"null.json: row 0: the answer column 'answer' is empty \(null\)"):
        load_problems("aime24", path=str(f))
    g = _write([{"Question": "q0", "Answer": 3.0}, {"Question": "q1", "Answer": float("nan")}], tmp_path / "n.parquet")
    with pytest.raises(DatasetError, match=r"n.parquet: row 1: column 'Answer' holds nan \(not a finite number"):
        load_problems("aime24", path=str(g))


def test_questions_and_gpqa_options_must_be_strings_or_numbers_too(tmp_path):
    f = _write([{"problem": ["1+1?"], "answer": "2"}], tmp_path / "q.json")
    with pytest.raises(DatasetError, match="q.json: row 0: column 'problem' holds a list"):
        load_problems("aime24", path=str(f))
    rows = _gpqa_rows(2)
    rows[1]["Incorrect Answer 2"] = {"text": "x"}
    g = _write(rows, tmp_path / "gpqa.jsonl")
    with pytest.raises(DatasetError, match="gpqa.jsonl: row 1: column 'Incorrect Answer 2' holds a dict"):
        load_problems("gpqa_diamond", path=str(g))


def test_number_answers_keep_their_text(tmp_path):
    # integers (the AIMO file), integral floats (a parquet column read as double), decimals, and
    # strings with leading zeros (AIME) become the same gold strings as before the type check
    rows = [{"id": "i", "problem": "a", "answer": 79}, {"id": "f", "problem": "b", "answer": 3.0},
            {"id": "h", "problem": "c", "answer": 0.5}, {"id": "s", "problem": "d", "answer": " 025 "},
            {"id": "n", "problem": "e", "answer": -4}]
    probs = load_problems("aime24", path=str(_write(rows, tmp_path / "nums.json")))
    assert [p.gold for p in probs] == ["79", "3", "0.5", "025", "-4"]


def test_shared_integer_answers_are_their_digits(leap_eval):
    raw = json.loads((leap_eval / "aimo.json").read_text())
    probs = load_problems("aimo25", path=str(leap_eval / "aimo.json"))
    assert [p.gold for p in probs] == [str(r["answer"]) for r in raw]
    assert all(isinstance(r["answer"], int) for r in raw)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_a_file_that_is_not_utf8_names_offset_line_and_the_fix(tmp_path, suffix):
    rows = [{"id": "a", "problem": "What is 1+1?", "answer": "2"},
            {"id": "b", "problem": "Combien font 2+2, déjà?", "answer": "4"}]
    if suffix == ".csv":
        text = "id,problem,answer\n" + "".join(f"{r['id']},{r['problem']},{r['answer']}\n" for r in rows)
    elif suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        text = json.dumps(rows, ensure_ascii=False, indent=1)
    data = text.encode("latin-1")  # é is one byte, 0xe9, which UTF-8 does not allow there
    f = tmp_path / f"latin1{suffix}"
    f.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(DatasetError) as exc:
        load_problems("aime24", path=str(f))
    msg = str(exc.value)
    assert msg.startswith(f"{f}: the file is not UTF-8 text"), msg
    line = data[:offset].count(b"\n") + 1
    assert f"offset {offset} (line {line}," in msg and "0xe9" in msg
    assert "Re-encode the file as UTF-8" in msg


def test_a_utf8_file_with_a_byte_order_mark_loads(tmp_path):
    f = tmp_path / "bom.json"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"problem": "d\u00e9j\u00e0 1+1?", "answer": 2}],
                                                 ensure_ascii=False).encode("utf-8"))
    (p,) = load_problems("aime24", path=str(f))
    assert p.question == "d\u00e9j\u00e0 1+1?" and p.gold == "2"


# ------------------------------------------------------------------------------------------- hub


@pytest.mark.parametrize("name", ["aime24", "aime25", "aimo25", "gpqa_diamond"])
def test_offline_hub_error_names_hub_id(monkeypatch, tmp_path, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    with pytest.raises(HubUnavailableError) as exc:
        load_problems(name, limit=2)
    msg = str(exc.value)
    assert BENCHMARKS[name].hub_id in msg
    assert "dataset.path" in msg
    assert "HF_HUB_OFFLINE=1" in msg


def test_hub_id_override_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(HubUnavailableError, match="someone/my_aime"):
        load_problems("aime24", hub_id="someone/my_aime", split="test")


def test_ids_are_printable_strings():
    for p in load_problems("synthetic"):
        assert all(c in string.printable for c in p.id)
