"""report.html / report.md against summary.json, and the transcript's peer attribution.

A small sweep (independent, compute-matched, two LeaP points) runs through the real round state
machine on the fake replica in-process (no Ray), is written as a run's files, and reported. Every
table cell of the HTML that shows a metric names its summary.json key (`data-src`); the test
reads each back and compares, and checks that the Markdown tables show the same cells.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from orchestrator.config import Config, prompt_file, sweep_points
from orchestrator.core import metrics
from orchestrator.core.grading import canonical_answer, extract_answer
from orchestrator.core.group import Group
from orchestrator.core.prompts import load_prompts
from orchestrator.core.types import Problem
from orchestrator.engines.fake import FakeReplica
from orchestrator.engines.tokenizer import FakeTokenizer, render_prompt
from orchestrator.report import write_report
from orchestrator.report.data import load_run
from orchestrator.report.document import load_transcript
from orchestrator.report.transcript import blocks_from_spans, blocks_from_tags, split_path

TOK = FakeTokenizer()
PROMPTS = load_prompts(prompt_file("default"))
PROBLEMS = [Problem(id=f"q{i}", benchmark="synthetic", question=f"What is {i} + 1?", gold=str(g))
            for i, g in enumerate((3, 5))]
SWEEP = [
    {"name": "independent", "mode": "independent"},
    {"name": "matched", "mode": "compute_matched", "token_budget": 300},
    {"T": 96, "top_k": 1, "router": "dispersed"},
    {"T": 96, "top_k": 2, "router": "clustered"},
]


def _cheap_grade(row: dict) -> dict:
    """Grading by voting key (math-verify costs ~45 ms a call; the report only reads verdicts)."""
    def verdict(text: str | None) -> tuple[str | None, bool]:
        answer = extract_answer(text or "")
        return answer, answer is not None and canonical_answer(answer) == canonical_answer(row["gold"])

    answer, ok = verdict(row["text"].split("</think>")[-1])
    rounds = [verdict(s) for s in row["summaries"]]
    return {**row, "answer": answer, "correct": ok, "correct_compat": ok,
            "round_answers": [a for a, _ in rounds], "round_correct": [c for _, c in rounds]}


async def _run_group(point: str, params, problem: Problem, replica: FakeReplica):
    group = Group(f"{point}|{problem.id}", problem, render_prompt(TOK, PROMPTS, problem, params),
                  params, PROMPTS, TOK, sweep_point=point)
    sent = set()
    while not group.done:
        reqs = group.requests()
        for r in reqs:
            if r.path_key not in sent:
                r.full, _ = group.full_tokens(r.path_key), sent.add(r.path_key)
        for res in await asyncio.gather(*(replica.generate(r) for r in reqs)):
            group.on_result(res)
    return group.records(), group.messages


def _char_spans(row: dict) -> list[dict]:
    """The spans with character offsets, computed as the path's record would: the length of the
    decoded text up to each token offset."""
    ids = TOK.encode(row["text"])
    assert TOK.decode(ids) == row["text"]

    def char(x: int) -> int:
        return len(TOK.decode(ids[:x]))

    return [{**s, "char_start": char(s["start"]), "char_end": char(s["end"])} for s in row["spans"]]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    cfg = Config()
    cfg.engine.kind = "fake"
    cfg.leap.paths, cfg.leap.max_rounds, cfg.leap.summary_tokens = 4, 3, 64
    cfg.sweep = SWEEP
    cfg.experiment = "unit_sweep"
    points = sweep_points(cfg)
    replica = FakeReplica(0, engine={"think_end_prob": 0.05, "run_seed": 1, "max_model_len": 4096})

    async def run_all():
        if hasattr(replica, "start"):
            await replica.start()
        out = []
        for name, params in points.items():
            for problem in PROBLEMS:
                out.append(await _run_group(name, params, problem, replica))
        return out

    rows, messages = [], []
    for group_rows, group_messages in asyncio.run(run_all()):
        rows += [_cheap_grade(r) for r in group_rows]
        messages += group_messages
    summary = metrics.summarize(rows, points=points)
    pq.write_table(pa.Table.from_pylist(rows), root / "paths.parquet")
    pq.write_table(pa.Table.from_pylist(messages), root / "messages.parquet")
    (root / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    (root / "config.json").write_text(json.dumps(OmegaConf.to_container(OmegaConf.structured(cfg))))
    (root / "run_info.json").write_text(json.dumps({"wall_s": 1.5, "generation_s": 1.25, "failovers": 0}))
    written = write_report(root, plots=False)  # figures: see test_single_point_run_without_baselines
    (root / "console.txt").write_text(written["text"])
    return root


# --------------------------------------------------------------------------- parsing back


class _Tables(HTMLParser):
    """Every <table data-table=KEY>: rows of (text, data-src or None, tag)."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str | None, str]]]] = {}
        self.peers: list[dict] = []
        self._table = self._cell = None
        self._peer = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "data-table" in a:
            self._table = self.tables.setdefault(a["data-table"], [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = [tag, a.get("data-src"), a.get("class") or "", ""]
        elif tag == "div" and "data-sender" in a:
            self._peer = {"rank": int(a["data-rank"]), "sender": a["data-sender"], "text": ""}

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append((self._cell[3], self._cell[1], self._cell[0], self._cell[2]))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "div" and self._peer is not None:
            self.peers.append(self._peer)
            self._peer = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[3] += data
        if self._peer is not None:
            self._peer["text"] += data


def _html(run_dir: Path) -> _Tables:
    parser = _Tables()
    parser.feed((run_dir / "report.html").read_text())
    return parser


def _md_tables(run_dir: Path) -> dict[str, list[list[str]]]:
    tables, key = {}, None
    for line in (run_dir / "report.md").read_text().splitlines():
        if line.startswith("<!-- table:"):
            key = line[len("<!-- table:"):-len(" -->")]
            tables[key] = []
        elif key and line.startswith("|"):
            cells = [_md_unescape(c.strip()) for c in line.strip("|").split(" | ")]
            if not set("".join(cells)) <= set("-:|"):
                tables[key].append(cells)
        elif key and not line.strip():
            key = None
    return tables


def _md_unescape(cell: str) -> str:
    """The text a report.md table cell shows (the reverse of `md_text`)."""
    return re.sub(r"\\([\\`*_\[\]|~])", r"\1", html.unescape(cell))


def _matches(text: str, value) -> bool:
    """The displayed text is the summary.json value at the precision shown."""
    if value is None:
        return text == "-"
    if isinstance(value, str):
        return text == value
    shown = text.replace(",", "")
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(float(shown) - float(value)) <= 0.5 * 10 ** -decimals + 1e-12


def test_every_metric_cell_equals_summary_json(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    tables = _html(run_dir).tables
    checked = 0
    for key, rows in tables.items():
        for row in rows:
            for text, src, tag, cls in row:
                if "num" in cls or "delta" in cls:
                    assert src is not None or text == "-", f"{key}: number {text!r} without a source"
                if src is None:
                    continue
                value = summary
                for k in json.loads(src):
                    value = value[k]
                assert _matches(text, value), f"{key}: {src} shows {text!r}, summary.json has {value!r}"
                checked += 1
    assert checked > 100
    main = tables["main"]
    assert any("Δ indep." in c[0] for c in main[1]) and any("Δ matched" in c[0] for c in main[1])
    # a LeaP row's delta is its Pass@1 minus the independent point's, as summary.json has it
    point = "T=96,router=dispersed,top_k=1"
    row = next(r for r in main if r and r[0][0] == point)
    src = json.loads(row[7][1])
    assert src == [point, "synthetic", "vs_independent", "pass@1"]
    assert float(row[7][0]) == pytest.approx(
        summary[point]["synthetic"]["pass@1"] - summary["independent"]["synthetic"]["pass@1"], abs=5e-4)


def test_markdown_tables_show_the_html_cells(run_dir):
    html_tables = _html(run_dir).tables
    md = _md_tables(run_dir)
    # the method comparison's tables ("methods", and "stopping" where a point stops early) come with
    # rows that record how paths ended (test_report_compare.py)
    assert set(md) - {"methods", "stopping"} == {"facts", "main", "tokens", "transitions", "pass_at_k", "problems"}
    for key, rows in md.items():
        body = [[c[0] for c in r] for r in html_tables[key] if r and r[0][2] == "td"]
        assert rows[1:] == body, key


def test_transitions_table_sums(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    table = summary["T=96,router=dispersed,top_k=1"]["synthetic"]["round_transitions"]
    assert list(table) == ["1", "2"]  # max_rounds 3: rounds 1 and 2 communicate
    for counts in table.values():
        assert counts["changed"] == sum(counts[k] for k in metrics.TRANSITIONS)
        assert 0 < counts["paths"] <= 8
    assert summary["independent"]["synthetic"]["round_transitions"] == {}


def _senders_summary(rows, point, problem, sender, round_):
    row = next(r for r in rows if r["sweep_point"] == point and r["problem_id"] == problem
               and r["path"] == sender)
    return row["summaries"][round_ - 1]  # every round but the last communicates


@pytest.mark.parametrize("exact", [False, True], ids=["tags", "char-spans"])
def test_transcript_attributes_every_peer_note_to_its_sender(run_dir, exact):
    rows = pq.read_table(run_dir / "paths.parquet").to_pylist()
    messages = pq.read_table(run_dir / "messages.parquet").to_pylist()
    checked = 0
    for row in rows:
        if row["sweep_point"] in ("independent", "matched"):
            continue
        mine = [m for m in messages if m["sweep_point"] == row["sweep_point"]
                and m["problem_id"] == row["problem_id"] and m["recipient"] == row["path"]]
        spans = _char_spans(row) if exact else row["spans"]
        blocks = split_path(row["text"], spans, PROMPTS, "math", mine, row["path"], [1, 2])
        assert "".join(b.text for b in blocks) == row["text"]  # nothing lost, nothing doubled
        notes = [(b.round, n) for b in blocks for n in b.notes]
        assert len(notes) == len(mine)
        for round_, note in notes:
            assert note.verified and note.sender is not None
            assert note.text == _senders_summary(rows, row["sweep_point"], row["problem_id"],
                                                 note.sender, round_)
            checked += 1
        summaries = [b.text for b in blocks if b.kind == "summary"]
        assert len(summaries) == len(row["summaries"])
    assert checked > 10


def test_tag_cut_matches_the_span_cut(run_dir):
    rows = pq.read_table(run_dir / "paths.parquet").to_pylist()
    for row in rows[::3]:
        by_span = blocks_from_spans(row["text"], _char_spans(row))
        by_tag = blocks_from_tags(row["text"], PROMPTS, "math")
        merged = [b for b in by_span if b.kind != "summary_fix"]  # tags keep the repair inside the summary
        assert [b.kind for b in by_tag] == [b.kind for b in merged], row["sweep_point"]


def test_html_transcript_names_senders(run_dir):
    run = load_run(run_dir)
    tr = load_transcript(run)
    assert tr is not None and tr.point not in ("independent", "matched")
    peers = _html(run_dir).peers
    assert peers and all(p["sender"] != "" for p in peers)
    rows = pq.read_table(run_dir / "paths.parquet").to_pylist()
    blocks = [b for b in tr.blocks if b.kind == "comment"]
    for p, note in zip(peers, [n for b in blocks for n in b.notes]):
        assert int(p["sender"]) == note.sender and f"path {note.sender}" in p["text"]
        assert note.text == _senders_summary(rows, tr.point, tr.problem_id, note.sender,
                                             next(b.round for b in blocks if note in b.notes))


def test_single_point_run_without_baselines(tmp_path, run_dir):
    point = "T=96,router=clustered,top_k=2"
    for name in ("paths.parquet", "messages.parquet"):
        table = pq.read_table(run_dir / name).to_pylist()
        pq.write_table(pa.Table.from_pylist([r for r in table if r["sweep_point"] == point]), tmp_path / name)
    only = json.loads((run_dir / "summary.json").read_text())[point]
    for m in only.values():
        del m["vs_independent"], m["vs_compute_matched"]
    (tmp_path / "summary.json").write_text(json.dumps({point: only}))
    written = write_report(tmp_path)
    tables = _html(tmp_path).tables
    assert not any("Δ" in c[0] for r in tables["main"] for c in r)
    assert [c[0] for c in tables["main"][-1]][0] == point
    names = {p.name for p in written["plots"]}
    # no sweep plots, and no accuracy-against-cost plot: one point has nothing to be compared with
    # (test_report_compare.py: a_single_point_has_nothing_to_compare_but_its_stops)
    assert names == {"pass1.png", "tokens.png", "transitions.png", "pass_at_k.png"}
    assert "table:methods" not in (tmp_path / "report.md").read_text()
    md = (tmp_path / "report.md").read_text()
    assert "Peer 1" in md
    for name in names:
        assert f"](plots/{name})" in md and (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    # one self-contained file: the figures inline, nothing fetched, no script
    text = (tmp_path / "report.html").read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert text.count("data:image/png;base64,") == len(names)


def test_report_computes_what_an_older_summary_lacks(tmp_path, run_dir):
    for name in ("paths.parquet", "messages.parquet", "config.json"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    summary = json.loads((run_dir / "summary.json").read_text())
    for per_bench in summary.values():
        for m in per_bench.values():
            for key in ("round_transitions", "settings", "vs_independent", "vs_compute_matched"):
                m.pop(key, None)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    run = load_run(tmp_path)
    assert run.derived and "round_transitions" in run.derived[0]
    full = json.loads((run_dir / "summary.json").read_text())
    point = "T=96,router=dispersed,top_k=1"
    assert run.summary[point]["synthetic"]["round_transitions"] == full[point]["synthetic"]["round_transitions"]
    assert run.summary[point]["synthetic"]["vs_independent"] == full[point]["synthetic"]["vs_independent"]


def test_run_facts_come_from_run_info_and_config(tmp_path, run_dir):
    for name in ("paths.parquet", "messages.parquet", "summary.json", "config.json"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    info = {"wall_s": 12.5, "generation_s": 2.0, "groups_run": 8, "groups_skipped": 2,
            "coordinator": {"moved_paths": 3, "replica_deaths": [{"replica": 1}], "barriers": 7},
            "replicas": [{"index": 0, "node": "abcdef0123456789", "device": "cuda", "capacity": 256,
                          "startup": [{"name": "loading_weights", "seconds": 2.5, "done": True},
                                      {"name": "ready", "seconds": 0.5, "done": True}]}],
            "replica_stats": [{"requests": 40, "new_tokens": 900}]}
    (tmp_path / "run_info.json").write_text(json.dumps(info))
    run = load_run(tmp_path)
    from orchestrator.report.data import facts_table, replica_table, run_info_table

    facts = {r[0].text: (r[1].text, r[2].text) for r in facts_table(run).rows}
    assert facts["wall time"] == ("12.500 s", "run_info.json")
    assert facts["failovers (paths moved)"] == ("3", "run_info.json")
    assert facts["replica deaths"] == ("1", "run_info.json")
    assert facts["groups already complete (resume)"] == ("2", "run_info.json")
    sampled = sum(r["sampled_tokens"] for r in pq.read_table(tmp_path / "paths.parquet").to_pylist())
    assert float(facts["tokens/s (sampled tokens / generation time)"][0].replace(",", "")) == \
        pytest.approx(sampled / 2.0, abs=0.05)
    assert facts["experiment"] == ("unit_sweep", "config.json")
    replicas = replica_table(run)
    row = dict(zip(replicas.headers, (c.text for c in replicas.rows[0])))
    assert row["node"] == "abcdef012345" and row["startup_s"] == "3.000" and row["requests"] == "40"
    rest = {r[0].text for r in run_info_table(run).rows}
    assert "coordinator.barriers" in rest and "coordinator.moved_paths" not in rest and "replicas" not in rest


def text_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The titled fixed-width tables of the console text: {title: rows as {header: cell}},
    columns cut where the rule under the header has its dashes."""
    out = {}
    for block in text.split("\n\n"):
        lines = block.splitlines()
        if len(lines) < 3 or set(lines[2]) - {"-", " "}:
            continue
        spans = [m.span() for m in re.finditer(r"-+", lines[2])]

        def cells(line: str) -> list[str]:
            return [line[a:b if k < len(spans) - 1 else None].strip() for k, (a, b) in enumerate(spans)]

        headers = cells(lines[1])
        out[lines[0]] = [dict(zip(headers, cells(ln))) for ln in lines[3:]]
    return out


def test_console_tables_show_the_summary_values(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    text = (run_dir / "console.txt").read_text()
    tables = text_tables(text)
    accuracy = {r["configuration"]: r for r in tables["Accuracy by configuration"]}
    tokens = {r["configuration"]: r for r in tables["Tokens and efficiency"]}
    assert set(accuracy) == set(tokens) == set(summary)
    for point, per_bench in summary.items():
        m = per_bench["synthetic"]
        assert accuracy[point]["N"] == str(m["paths_per_problem"])
        assert float(accuracy[point]["Pass@1"]) == pytest.approx(m["pass@1"], abs=5e-4)
        assert float(accuracy[point]["Cons@4"]) == pytest.approx(m["cons@N"], abs=5e-4)
        for key in ("sampled", "injected", "total"):
            shown = float(tokens[point][f"{key}/path"].replace(",", ""))
            assert shown == pytest.approx(m["tokens_per_path"][key], abs=0.5)
    # four configurations with long names: the per-problem table would not fit a terminal
    assert "Per problem: 2 problem(s) x 4 configuration(s), too wide for the terminal" in text
    assert text.endswith("messages: 48 delivered over 2 round(s), mean similarity "
                         f"{_mean_similarity(run_dir):.3f}")


def _mean_similarity(run_dir: Path) -> float:
    sims = pq.read_table(run_dir / "messages.parquet", columns=["similarity"]).column(0).to_pylist()
    return sum(sims) / len(sims)


# --------------------------------------------------------------------------- untrusted text

HOSTILE = ["<script>alert(1)</script>", '<img src=x onerror="alert(2)">', "[click](javascript:alert(3))",
           "![pixel](http://example.invalid/t.png)", "a | b", "``` `x` ````", "**bold** _it_ ~~del~~",
           "&lt;script&gt; \\<b>"]


def _outside_fences(md: str) -> tuple[str, list[str]]:
    """report.md split the way CommonMark reads fences: the text outside fenced code blocks, and
    each block's content."""
    outside, blocks, fence, body = [], [], None, []
    for line in md.split("\n"):
        if fence is None:
            m = re.match(r" {0,3}(`{3,})([^`]*)$", line)
            if m:
                fence, body = m.group(1), []
            else:
                outside.append(line)
        elif re.fullmatch(r" {0,3}`{%d,} *" % len(fence), line):
            blocks.append("\n".join(body))
            fence = None
        else:
            body.append(line)
    assert fence is None, "a fence was left open"
    return "\n".join(outside), blocks


def _code_span_body(span: str) -> str:
    """What a code span written by `md_code` shows (CommonMark's rules for one span)."""
    opening = re.match(r"`+", span).group(0)
    assert span.endswith(opening) and len(span) > 2 * len(opening)
    body = span[len(opening):-len(opening)]
    assert all(len(run) != len(opening) for run in re.findall(r"`+", body)), "the span would close early"
    if body.startswith(" ") and body.endswith(" ") and body.strip(" "):
        body = body[1:-1]
    return body


@pytest.mark.parametrize("text", HOSTILE + ["`", " `lead", "trail` ", "  ", "", " two  spaces "])
def test_code_span_shows_its_text_exactly(text):
    from orchestrator.report.markdown import md_code

    assert _code_span_body(md_code(text)) == (text or " ")


@pytest.mark.parametrize("text", HOSTILE)
def test_escaped_text_keeps_no_markup(text):
    from orchestrator.report.markdown import md_text

    out = md_text(text + "\nsecond line")
    assert "\n" not in out and "<" not in out and ">" not in out
    assert not re.search(r"(?<!\\)[\[\]|`*]", out.replace("\\\\", "")), out  # every such char escaped
    assert _md_unescape(out) == text + " second line"  # and nothing else changed


def _hostile_transcript():
    from orchestrator.report.document import Transcript
    from orchestrator.report.transcript import Block, Note

    evil = " ".join(HOSTILE)
    blocks = [Block("segment", f"Let me think.\n\n{evil}\n````\n# not a heading\n````````", round=1),
              Block("summary", f"<summarize> {evil} </summarize>", round=1, answer=("<b>7</b>", False)),
              Block("comment", "<comment> ... </comment>", round=1,
                    notes=[Note(rank=1, text=f"{evil}\nnext line", sender=2, similarity=0.5, verified=True)]),
              Block("answer", evil)]
    row = {"gold": "`3`", "answer": "<script>x()</script>", "correct": False, "finish_reason": "<i>stop</i>"}
    return Transcript("T=96<x>", "bench*mark", "q`1`", 0, row, blocks, "spans"), blocks


def test_markdown_transcript_shows_model_text_as_text():
    from orchestrator.report.document import table_md, transcript_md
    from orchestrator.report.data import Cell, Table

    tr, blocks = _hostile_transcript()
    table = Table("problems", "Per problem", ["problem", "majority"],
                  [[Cell(h), Cell(h, kind="num")] for h in HOSTILE], note="<script>n()</script>")
    md = transcript_md(tr) + "\n" + table_md(table)
    outside, fenced = _outside_fences(md)
    # the blocks' text sits verbatim in code blocks that close where they should
    assert fenced == [b.text for b in blocks if b.kind != "comment"]
    # short strings sit in code spans (shown literally) that they cannot close
    spans = re.findall(r"(`+)( ?.*?)\1(?!`)", outside.splitlines()[0])
    assert [_code_span_body(o + b + o) for o, b in spans] == ["T=96<x>", "q`1`", "`3`", "<script>x()</script>"]
    # everywhere else: no tag, link or image survives as markup
    first, rest = outside.split("\n", 1)
    prose = re.sub(r"(`+)( ?.*?)\1(?!`)", "", first) + "\n" + rest
    for bad in ("<script", "<img", "<b>", "<i>", r"(?<!\\)\]\(", r"(?<!\\)\[", r"(?<!\\)`"):
        assert not re.search(bad, prose), bad
    # the table keeps its shape: one cell per column, whatever the text holds
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert all(len(re.findall(r"(?<!\\)\|", ln)) == 3 for ln in rows)
    assert [_md_unescape(r[2:-2].split(" | ")[0]) for r in rows[1:]] == HOSTILE


def test_markdown_report_renders_without_model_html():
    """Rendered by a CommonMark parser, the hostile transcript and table hold no tag of theirs and
    no link: only the text."""
    markdown_it = pytest.importorskip("markdown_it")
    from orchestrator.report.document import table_md, transcript_md
    from orchestrator.report.data import Cell, Table

    tr, _ = _hostile_transcript()
    table = Table("problems", "Per problem", ["problem"], [[Cell(h)] for h in HOSTILE])
    md = transcript_md(tr) + "\n" + table_md(table)
    rendered = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    tags = set(re.findall(r"<([a-z]+)", rendered))
    assert tags <= {"p", "strong", "pre", "code", "ul", "li", "table", "thead", "tbody", "tr", "th", "td"}, tags
    assert "javascript:" not in re.sub(r">[^<]*<", "><", rendered)  # never inside a tag
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered


def test_ungraded_paths_are_shown_apart(tmp_path, run_dir):
    from orchestrator.core.grading import ungraded_record

    point = "T=96,router=dispersed,top_k=1"
    rows = pq.read_table(run_dir / "paths.parquet").to_pylist()
    mine = [i for i, r in enumerate(rows) if r["sweep_point"] == point and r["problem_id"] == "q0"]
    rows[mine[0]] = ungraded_record(rows[mine[0]])  # its grading worker died
    rows[mine[1]] = {**rows[mine[1]], "correct": None}  # its check timed out
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "paths.parquet")
    for name in ("messages.parquet", "config.json", "run_info.json"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    from orchestrator.report.data import settings_from_config

    points = settings_from_config(json.loads((run_dir / "config.json").read_text()))
    summary = metrics.summarize(rows, points=points)
    assert summary[point]["synthetic"]["ungraded"] == 2
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    written = write_report(tmp_path, plots=False)

    stored = json.loads((tmp_path / "summary.json").read_text())
    tables = _html(tmp_path).tables
    head = [c[0] for c in tables["main"][1]]
    assert head.count("ungraded") == 1  # one benchmark
    col = head.index("ungraded")
    shown = {r[0][0]: r[col] for r in tables["main"] if r and r[0][2] == "td"}
    assert shown[point][0] == "2" and json.loads(shown[point][1]) == [point, "synthetic", "ungraded"]
    assert shown["independent"][0] == "0" and shown["independent"][1] is None  # absent: none
    for key, body in tables.items():  # every number still reads back from summary.json
        for row in body:
            for text, src, _, _ in row:
                if src is not None:
                    value = stored
                    for k in json.loads(src):
                        value = value[k]
                    assert _matches(text, value), (key, src, text, value)
    per_problem = tables["problems"][1]
    assert sum(1 for c in per_problem if c[0] == "ungraded") == len(SWEEP)
    md = (tmp_path / "report.md").read_text()
    html = (tmp_path / "report.html").read_text()
    for text in (md, html, written["text"]):
        assert "2 path(s) could not be graded" in text and "not counted wrong" in text
    assert "| ungraded |" in md or " ungraded |" in md
    # the unchanged run says nothing about it
    assert "could not be graded" not in (run_dir / "report.md").read_text()
    assert "ungraded" not in [c[0] for r in _html(run_dir).tables["main"] for c in r]
    from orchestrator.report.document import transcript_md

    tr = load_transcript(load_run(tmp_path), point, "q0", rows[mine[0]]["path"])
    assert tr.row["correct"] is None and "(ungraded)" in transcript_md(tr)
