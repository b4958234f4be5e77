"""Benchmarks as `Problem` lists: from the Hugging Face Hub, from a local file, or built in.

    load_problems("aime24")                            # hub (HuggingFaceH4/aime_2024)
    load_problems("aime24", path="aime.json", limit=5)  # local json / jsonl / parquet / csv
    load_problems("gpqa_diamond", path="gpqa.parquet", seed=3)
    load_problems("synthetic")                         # six tiny arithmetic word problems

Every hub id and column mapping lives in `BENCHMARKS`. Local files are read with pyarrow (parquet,
csv) or the json module and their columns are detected: the question from problem / question /
Question, the gold answer from answer / Answer (never from a worked solution), the id from id /
ID / Record ID, else year-aime_number-problem_number, else the row index.

GPQA rows in the Idavidrein/gpqa layout (Question, Correct Answer, Incorrect Answer 1-3) get their
four options shuffled by a `random.Random` seeded from sha256(seed, question id) (the public copies
list the correct option first), rendered as "A) ..." lines under the question; gold is the letter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable

import huggingface_hub.constants as hub_constants
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ..core.files import read_utf8
from ..core.types import Problem
from ..errors import UserError

__all__ = [
    "BENCHMARKS",
    "BenchmarkSpec",
    "DatasetError",
    "HubUnavailableError",
    "SYNTHETIC_PROBLEMS",
    "gpqa_shuffle",
    "load_problems",
    "problems_from_rows",
    "read_rows",
]

LETTERS = "ABCD"

# Generic column names, tried in order after a benchmark's own preferred names.
QUESTION_COLUMNS = ("problem", "question", "Question", "Problem", "prompt")
ANSWER_COLUMNS = ("answer", "Answer", "gold", "final_answer", "expected_answer")
ID_COLUMNS = ("id", "ID", "Record ID", "problem_id", "idx", "uid")
GPQA_CORRECT = "Correct Answer"
GPQA_INCORRECT = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives on the hub and which of its columns hold what."""

    name: str
    kind: str  # "math" | "gpqa"
    hub_id: str | None
    config: str | None = None
    split: str = "train"
    question: tuple[str, ...] = ()
    answer: tuple[str, ...] = ()
    id: tuple[str, ...] = ()
    note: str = ""


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "aime24": BenchmarkSpec(
        "aime24", "math", "HuggingFaceH4/aime_2024", split="train",
        question=("problem",), answer=("answer",), id=("id",),
    ),
    "aime25": BenchmarkSpec(
        "aime25", "math", "math-ai/aime25", split="test",
        question=("problem",), answer=("answer",), id=("id",),
    ),
    "aimo25": BenchmarkSpec(
        # The 10 AIMO Progress Prize 2 reference problems (Kaggle's reference.csv: id, problem, answer).
        "aimo25", "math", "cdtmc/aimo_reference", split="train",
        question=("problem",), answer=("answer",), id=("id",),
    ),
    "gpqa_diamond": BenchmarkSpec(
        "gpqa_diamond", "gpqa", "Idavidrein/gpqa", config="gpqa_diamond", split="train",
        question=("Question",), answer=(), id=("Record ID",),
        note="The dataset is gated: accept its terms on the hub and log in (HF_TOKEN) first.",
    ),
    "synthetic": BenchmarkSpec("synthetic", "math", None),
}

# (question, integer answer): short enough that a 135M instruct model sometimes gets them right.
SYNTHETIC_PROBLEMS: tuple[tuple[str, int], ...] = (
    ("Tom has 3 apples and buys 4 more. How many apples does Tom have now?", 7),
    ("A box holds 5 pencils. How many pencils are in 2 boxes?", 10),
    ("Sara had 12 candies and gave 5 to her friend. How many candies does Sara have left?", 7),
    ("There are 4 rows of chairs with 6 chairs in each row. How many chairs are there?", 24),
    ("A train travels 30 kilometers every hour. How far does it travel in 3 hours?", 90),
    ("Ben shares 20 stickers equally among 4 friends. How many stickers does each friend get?", 5),
)


class DatasetError(UserError, ValueError):
    """A local file or hub table that cannot be turned into problems (names the file and row,
    counting rows from 0). Exits with status 2."""


class HubUnavailableError(UserError, RuntimeError):
    """The benchmark could not be fetched from the Hugging Face Hub (the message says to set
    dataset.path). Exits with status 2."""


# --------------------------------------------------------------------------------------------
# public entry


def load_problems(
    name: str,
    path: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    hub_id: str | None = None,
    split: str | None = None,
) -> list[Problem]:
    """Load benchmark `name` as a list of `Problem`s (benchmark = name, ids unique strings).

    `path` reads a local json list / jsonl / parquet / csv file instead of the hub; `hub_id` and
    `split` override the table's hub location. `seed` drives the GPQA option shuffle. `limit` keeps
    the first N problems (after loading, before nothing else: order is the file's order).
    """
    if name not in BENCHMARKS:
        raise ValueError(
            f"unknown benchmark {name!r}; allowed values: {', '.join(sorted(BENCHMARKS))}"
        )
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    spec = BENCHMARKS[name]

    if path:
        source = str(path)
        rows = read_rows(path)
    elif name == "synthetic" and hub_id is None:
        problems = [
            Problem(id=f"synthetic-{i}", benchmark=name, question=q, gold=str(a), kind="math")
            for i, (q, a) in enumerate(SYNTHETIC_PROBLEMS, start=1)
        ]
        return problems[:limit] if limit is not None else problems
    else:
        rows, source = _hub_rows(spec, hub_id=hub_id, split=split)

    if limit is not None:
        rows = rows[:limit]
    return problems_from_rows(rows, spec, source=source, seed=seed)


# --------------------------------------------------------------------------------------------
# reading


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a local table as a list of row dicts: .json (a list of objects, or jsonl content),
    .jsonl / .ndjson, .parquet / .pq, .csv."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: no such file (dataset.path must name a json, jsonl or parquet file)")
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            return pq.read_table(p).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as exc:  # the kinds pyarrow raises for a damaged file
            raise DatasetError(f"{p}: cannot read parquet: {exc}") from exc
    if suffix == ".csv":
        try:
            return pcsv.read_csv(p).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as exc:
            read_utf8(p, DatasetError)  # pyarrow's message for a non-UTF-8 file names no place
            raise DatasetError(f"{p}: cannot read csv: {exc}") from exc
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(p, read_utf8(p, DatasetError))
    if suffix == ".json":
        text = read_utf8(p, DatasetError)
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return _read_jsonl(p, text)  # a .json file holding one object per line
        return _json_records(data, p)
    raise DatasetError(f"{p}: unsupported file type {suffix!r} (use .json, .jsonl, .parquet or .csv)")


def _read_jsonl(p: Path, text: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{p}: row {len(rows)} (line {lineno}): invalid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise DatasetError(f"{p}: row {len(rows)} (line {lineno}): expected an object, got {type(obj).__name__}")
        rows.append(obj)
    return rows


def _json_records(data: Any, p: Path) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        # {"data": [...]}-style wrappers, or a column-oriented {"col": [values...]} table.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1 and all(isinstance(r, dict) for r in lists[0]):
            data = lists[0]
        elif lists and len(lists) == len(data) and len({len(v) for v in lists}) == 1:
            keys = list(data)
            data = [dict(zip(keys, vals)) for vals in zip(*data.values())]
        else:
            raise DatasetError(f"{p}: expected a JSON list of objects")
    if not isinstance(data, list):
        raise DatasetError(f"{p}: expected a JSON list of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DatasetError(f"{p}: row {i}: expected an object, got {type(row).__name__}")
    return data


def _hub_rows(spec: BenchmarkSpec, hub_id: str | None, split: str | None) -> tuple[list[dict], str]:
    repo = hub_id or spec.hub_id
    split = split or spec.split
    config = spec.config if hub_id in (None, spec.hub_id) else None
    if repo is None:
        raise ValueError(f"benchmark {spec.name!r} has no hub dataset; pass path=...")
    source = f"hub:{repo}" + (f"[{config}]" if config else "") + f"/{split}"
    try:
        from datasets import load_dataset  # heavy (pandas, fsspec, the hub client): only for a hub dataset

        with _offline_switch_from_env():
            ds = load_dataset(repo, config, split=split) if config else load_dataset(repo, split=split)
        rows = ds.to_list()
    # every way the hub fails (no network, an unknown id or split, an offline cache without the
    # set, datasets itself missing) raises another type; each becomes the same message naming
    # the way around it (dataset.path)
    except Exception as exc:
        raise HubUnavailableError(_hub_error_message(spec, repo, config, split, exc)) from exc
    return rows, source


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@contextlib.contextmanager
def _offline_switch_from_env():
    """Honour HF_HUB_OFFLINE / HF_DATASETS_OFFLINE as they are now.

    `huggingface_hub` and `datasets` read the switch once, at import; a switch set later (by a
    launcher, or a test) would otherwise be ignored and every request retried for ~25 s.
    """
    if not (_env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")):
        yield
        return
    import datasets.config as ds_config  # heavy, and only for a hub dataset

    saved = (hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE, ds_config.HF_DATASETS_OFFLINE)
    hub_constants.HF_HUB_OFFLINE = ds_config.HF_HUB_OFFLINE = ds_config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE, ds_config.HF_DATASETS_OFFLINE = saved


def _hub_error_message(spec: BenchmarkSpec, repo: str, config: str | None, split: str, exc: BaseException) -> str:
    offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if _env_true(v)]
    where = repo + (f" (config {config!r}, split {split!r})" if config else f" (split {split!r})")
    lines = [f"cannot load benchmark {spec.name!r} from the Hugging Face Hub dataset {where}."]
    if offline:
        lines.append(f"Offline mode is on ({', '.join(offline)} set) and the dataset is not in the local cache.")
    else:
        lines.append("The hub is unreachable or the dataset is not accessible.")
    if spec.note:
        lines.append(spec.note)
    lines.append(
        f"Set dataset.path to a local json/jsonl/parquet file with the same rows "
        f"(e.g. dataset={spec.name} dataset.path=/data/{spec.name}.jsonl), "
        f"or fetch {repo} into the cache on a connected machine and run with HF_HUB_OFFLINE=1."
    )
    lines.append(f"Cause: {type(exc).__name__}: {str(exc)[:500]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# rows -> problems


def problems_from_rows(
    rows: list[dict[str, Any]], spec: BenchmarkSpec, source: str = "<rows>", seed: int = 0
) -> list[Problem]:
    """Turn row dicts into problems of `spec`'s benchmark, detecting columns per row."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        qid = _row_id(row, i, spec)
        if qid in seen:
            raise DatasetError(f"{source}: row {i}: duplicate id {qid!r} (also row {seen[qid]})")
        seen[qid] = i
        question = _text(_scalar(*_pick(row, spec.question + QUESTION_COLUMNS, "question", source, i), source, i))
        if not question:
            raise DatasetError(f"{source}: row {i}: empty question")
        if spec.kind == "gpqa" and GPQA_CORRECT in row:
            correct, incorrect = _gpqa_options(row, source, i)
            text, gold = gpqa_shuffle(question, correct, incorrect, seed=seed, qid=qid)
        else:
            gold = _answer(_scalar(*_pick(row, spec.answer + ANSWER_COLUMNS, "answer", source, i), source, i))
            if not gold:
                raise DatasetError(f"{source}: row {i}: empty answer")
            text = question
            if spec.kind == "gpqa":  # pre-rendered multiple choice: the answer must be a letter
                gold = gold.strip("() .").upper()
                if gold not in LETTERS:
                    raise DatasetError(f"{source}: row {i}: GPQA answer must be a letter A-D, got {gold!r}")
        problems.append(Problem(id=qid, benchmark=spec.name, question=text, gold=gold, kind=spec.kind))
    return problems


def _pick(row: dict, names: Iterable[str], what: str, source: str, i: int) -> tuple[str, Any]:
    """(column, value) of the first of `names` the row has a value in."""
    names = tuple(dict.fromkeys(names))
    for n in names:
        if n in row and row[n] is not None:
            return n, row[n]
    empty = [n for n in names if n in row]
    if empty:
        raise DatasetError(f"{source}: row {i}: the {what} column {empty[0]!r} is empty (null)")
    raise DatasetError(
        f"{source}: row {i}: missing {what} column (looked for {', '.join(names)}; "
        f"row has {', '.join(map(str, row)) or 'no columns'})"
    )


def _scalar(column: str, value: Any, source: str, i: int) -> str | int | float | Decimal:
    """`value` when it is a string or a finite number; else a `DatasetError` naming the row and
    the column (a list, a dict or a boolean would otherwise turn into text such as "['5']")."""
    if isinstance(value, bool):
        problem = f"a boolean ({value})"
    elif isinstance(value, (str, int)):
        return value
    elif isinstance(value, (float, Decimal)):
        if math.isfinite(value):
            return value
        problem = f"{value} (not a finite number: an empty cell?)"
    else:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        problem = f"a {type(value).__name__} ({shown})"
    raise DatasetError(f"{source}: row {i}: column {column!r} holds {problem}; it must hold a string or a "
                       f"number (one value per row, e.g. \"5\" or 5)")


def _text(value: Any) -> str:
    return str(value).strip()


def _answer(value: str | int | float | Decimal) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _row_id(row: dict, i: int, spec: BenchmarkSpec) -> str:
    for n in dict.fromkeys(spec.id + ID_COLUMNS):
        v = row.get(n)
        if v is not None and str(v).strip():
            return str(v).strip()
    parts = [row.get(k) for k in ("year", "aime_number", "problem_number")]
    if all(v is not None and str(v).strip() for v in parts):
        return "-".join(str(v).strip() for v in parts)
    return str(i)


def _gpqa_options(row: dict, source: str, i: int) -> tuple[str, list[str]]:
    opts = []
    for col in (GPQA_CORRECT,) + GPQA_INCORRECT:
        if row.get(col) is None:
            raise DatasetError(f"{source}: row {i}: missing column {col!r} (GPQA layout)")
        text = _text(_scalar(col, row[col], source, i))
        if not text:
            raise DatasetError(f"{source}: row {i}: empty {col!r}")
        opts.append(text)
    return opts[0], opts[1:]


def _rng(seed: int, qid: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{qid}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def gpqa_shuffle(question: str, correct: str, incorrect: list[str], seed: int, qid: str) -> tuple[str, str]:
    """Shuffle the four options with an RNG seeded from (seed, qid); return (rendered text, gold letter)."""
    options = [correct, *incorrect]
    if len(options) != len(LETTERS):
        raise ValueError(f"GPQA needs {len(LETTERS)} options, got {len(options)}")
    order = list(range(len(options)))
    _rng(seed, qid).shuffle(order)
    lines = [f"{LETTERS[pos]}) {options[k]}" for pos, k in enumerate(order)]
    gold = LETTERS[order.index(0)]
    return question + "\n\n" + "\n".join(lines), gold
