"""The report files: `report.html` (one self-contained file: inline CSS, PNGs as data URIs, no
script) and `report.md` (the same tables; the PNGs under `plots/` beside it).

Both render the same `Table`s and figures; every metric cell of the HTML carries its summary.json
key path in `data-src`, and every Markdown table is preceded by `<!-- table:KEY -->`.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from ..config import prompt_file
from ..core.metrics import comm_round_list
from ..core.prompts import load_prompts
from . import data as D
from .compare import report_tables
from .markdown import md_code, md_fence, md_text
from .plots import Figure, figures, write_figures
from .text import console_text
from .transcript import Block, split_path

log = logging.getLogger(__name__)

PLOT_DIR = "plots"


@dataclass
class Transcript:
    point: str
    benchmark: str
    problem_id: str
    path: int
    row: dict
    blocks: list[Block]
    method: str  # "spans" (exact character offsets) or "tags"


# --------------------------------------------------------------------------- transcript


def choose_path(run: D.Run) -> tuple[str, str, int] | None:
    """A path worth reading: in a communicating configuration, one that received peer notes and
    then changed its answer (wrong to right first), else the first that received any."""
    received = {(m["sweep_point"], str(m["problem_id"]), int(m["recipient"])) for m in run.messages}
    if not received:
        return None
    order = {p: i for i, p in enumerate(run.order)}
    rows = sorted((r for r in run.rows if (r["sweep_point"], str(r["problem_id"]), int(r["path"])) in received),
                  key=lambda r: (order.get(r["sweep_point"], len(order)), str(r["problem_id"]), r["path"]))

    def score(r: dict) -> int:
        points = list(zip(r.get("round_answers") or [], r.get("round_correct") or []))
        verdicts = [ok for _, ok in points] + [r.get("correct")]
        if any(a is False and b for a, b in zip(verdicts, verdicts[1:])):  # None: ungraded
            return 3  # wrong to right somewhere
        if r.get("answer_changed"):
            return 2
        return 1

    best = max(rows, key=score, default=None)  # max keeps the first of equals
    if best is None:
        return None
    return best["sweep_point"], str(best["problem_id"]), int(best["path"])


def _prompts(run: D.Run):
    spec = (run.config.get("leap") or {}).get("prompts")
    if not spec:
        return None
    try:
        return load_prompts(prompt_file(spec))
    except Exception as exc:  # wording unknown: the cut falls back to the tags alone
        log.info("prompt file %r not loaded (%s); the transcript is cut by tags only", spec, exc)
        return None


def load_transcript(run: D.Run, point: str | None = None, problem: str | None = None,
                    path: int | None = None) -> Transcript | None:
    if point is None or problem is None or path is None:
        chosen = choose_path(run)
        if chosen is None:
            return None
        point = point or chosen[0]
        problem = problem if problem is not None else chosen[1]
        path = path if path is not None else (chosen[2] if (point, problem) == chosen[:2] else 0)
    file = run.root / "paths.parquet"
    names = set(pq.read_schema(file).names)
    columns = [c for c in ("sweep_point", "benchmark", "problem_id", "path", "text", "spans", "gold",
                           "answer", "correct", "summaries", "round_answers", "round_correct",
                           "finish_reason", "sampled_tokens", "injected_tokens") if c in names]
    table = pq.read_table(file, columns=columns,
                          filters=[("sweep_point", "=", point), ("problem_id", "=", str(problem)),
                                   ("path", "=", int(path))])
    rows = table.to_pylist()
    if not rows:
        raise ValueError(f"no path {path} of problem {problem!r} at sweep point {point!r} in {file}")
    row = rows[0]
    graded = next((r for r in run.rows if r["sweep_point"] == point and str(r["problem_id"]) == str(problem)
                   and int(r["path"]) == int(path)), {})
    for key in ("round_answers", "round_correct"):
        if row.get(key) is None and graded.get(key) is not None:
            row[key] = graded[key]
    kind = "gpqa" if str(row.get("benchmark", "")).startswith("gpqa") else "math"
    messages = [m for m in run.messages if m["sweep_point"] == point and str(m["problem_id"]) == str(problem)]
    rounds = comm_round_list(run.settings.get(point) or {}) or None
    spans = row.get("spans") or []
    blocks = split_path(row.get("text") or "", spans, _prompts(run), kind, messages, int(path), rounds)
    answers = list(zip(row.get("round_answers") or [], row.get("round_correct") or []))
    for b in (b for b in blocks if b.kind == "summary"):
        if answers:
            b.answer = answers.pop(0)
    exact = bool(spans) and all(s.get("char_start") is not None for s in spans)
    return Transcript(point, str(row.get("benchmark")), str(problem), int(path), row, blocks,
                      "spans" if exact else "tags")


# --------------------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1300px;color:#222;padding:0 16px}
h1{font-size:24px;margin-bottom:2px}h2{font-size:19px;margin-top:34px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-top:0}nav a{margin-right:14px}
table{border-collapse:collapse;margin:10px 0;font-size:13px}th,td{border:1px solid #ddd;padding:3px 8px}
th{background:#f4f4f4;font-weight:600}td.num,td.delta,td.calc{text-align:right;font-variant-numeric:tabular-nums}
td.head{font-weight:600;white-space:nowrap}td.pos{color:#1b5e20}td.neg{color:#b71c1c}
.note{color:#555;font-size:12.5px;max-width:1100px}.scroll{overflow-x:auto}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:12.5px}
.incomplete{background:#fdecea;border:1px solid #f5c2c0;padding:6px 10px;font-weight:600}
.derived{background:#fff8e1;border:1px solid #ffe082;padding:6px 10px;font-size:12.5px}
.ungraded{background:#fdecea;border:1px solid #f5c2c0;padding:6px 10px;font-size:12.5px}
.blk{border-left:4px solid #bbb;margin:6px 0;padding:4px 10px;background:#fafafa}
.blk .lab{font-size:11.5px;color:#555;text-transform:uppercase;letter-spacing:.03em}
.blk pre{white-space:pre-wrap;word-wrap:break-word;margin:2px 0;font:12.5px/1.4 ui-monospace,Menlo,Consolas,monospace}
.k-segment{border-color:#90a4ae}.k-segment pre{max-height:320px;overflow:auto}.k-summary{border-color:#1565c0;background:#e3f2fd}.k-summary_prompt,.k-summary_fix,.k-reflection,.k-force{border-color:#bdbdbd;background:#f5f5f5;color:#555}
.k-comment{border-color:#ef6c00;background:#fff3e0}.k-no_peers{border-color:#ffcc80;background:#fffaf2}.k-answer{border-color:#2e7d32;background:#e8f5e9}
.peer{margin:4px 0 4px 8px}.peer b{color:#e65100}.ok{color:#2e7d32}.bad{color:#b71c1c}
.legend span{display:inline-block;margin-right:10px;padding:1px 6px;border-left:4px solid}
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _cell_html(c: D.Cell, tag: str = "td") -> str:
    cls = [c.kind] if c.kind != "text" else []
    if c.kind == "delta" and c.text not in ("-", "+0.000", "-0.000"):
        cls.append("pos" if c.text.startswith("+") else "neg")
    attrs = f' class="{" ".join(cls)}"' if cls else ""
    if c.src is not None:
        attrs += f" data-src='{_e(json.dumps([str(k) for k in c.src]))}'"
    return f"<{tag}{attrs}>{_e(c.text)}</{tag}>"


def table_html(t: D.Table, empty: bool = True) -> str:
    if not t.rows:
        return f'<p class="note">{_e(t.title)}: nothing to show for this run.</p>' if empty else ""
    out = [f'<div class="scroll"><table data-table="{_e(t.key)}">', "<thead>"]
    if any(label for label, _ in t.groups):
        out.append("<tr>" + "".join(f'<th colspan="{span}">{_e(label)}</th>' for label, span in t.groups) + "</tr>")
    out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in t.headers) + "</tr></thead><tbody>")
    for row in t.rows:
        out.append("<tr>" + "".join(_cell_html(c) for c in row) + "</tr>")
    out.append("</tbody></table></div>")
    if t.note:
        out.append(f'<p class="note">{_e(t.note)}</p>')
    return "\n".join(out)


def figure_html(fig: Figure | None) -> str:
    if fig is None:
        return ""
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure><img alt="{_e(fig.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(fig.caption)}</figcaption></figure>")


def _block_title(b: Block) -> str:
    where = f"round {b.round} · " if b.round is not None else ""
    graded = ""
    if b.answer is not None:
        answer, ok = b.answer
        graded = f" · answer {answer if answer is not None else 'none'} ({_verdict_word(ok)})"
    return f"{where}{b.label} ({b.provenance}){graded}"


def _verdict_word(ok) -> str:
    return "ungraded" if ok is None else ("right" if ok else "wrong")


def transcript_html(tr: Transcript | None) -> str:
    if tr is None:
        return '<p class="note">No path received peer messages in this run: nothing to show.</p>'
    row = tr.row
    head = [
        ["configuration", tr.point], ["benchmark", tr.benchmark], ["problem", tr.problem_id],
        ["path", tr.path], ["gold", row.get("gold")], ["final answer", row.get("answer")],
        ["correct", "ungraded" if row.get("correct") is None else row.get("correct")],
        ["finish", row.get("finish_reason")],
        ["cut by", "character spans (exact)" if tr.method == "spans" else "tags and prompt wording"],
    ]
    parts = ['<table data-table="transcript-facts">' + "".join(
        f"<tr><th>{_e(k)}</th><td>{_e('-' if v is None else v)}</td></tr>" for k, v in head) + "</table>"]
    parts.append('<p class="legend">' + "".join(
        f'<span class="k-{k}">{_e(k.replace("_", " "))}</span>'
        for k in ("segment", "summary_prompt", "summary", "comment", "reflection", "force", "answer")) + "</p>")
    for b in tr.blocks:
        body = [f'<div class="blk k-{b.kind}" data-kind="{b.kind}" data-round="{"" if b.round is None else b.round}">',
                f'<div class="lab">{_e(_block_title(b))}</div>']
        if b.kind == "comment" and b.notes:
            for n in b.notes:
                who = f"path {n.sender}" if n.sender is not None else "unknown sender"
                check = ('<span class="ok">matches its summary</span>' if n.verified
                         else '<span class="bad">not matched to a message</span>')
                sim = f" · similarity {n.similarity:.3f}" if n.similarity is not None else ""
                body.append(f'<div class="peer" data-rank="{n.rank}" data-sender="{"" if n.sender is None else n.sender}">'
                            f"<b>Peer {n.rank} ← {_e(who)}</b>{_e(sim)} · {check}<pre>{_e(n.text)}</pre></div>")
        else:
            body.append(f"<pre>{_e(b.text)}</pre>")
        body.append("</div>")
        parts.append("".join(body))
    return "\n".join(parts)


def _comparison_html(tables: dict[str, D.Table],
                     figs: dict[str, Figure]) -> list[tuple[str, str, list[str]]]:
    """The sections of the method comparison; none for a run whose rows lack the method columns."""
    out = []
    if tables.get("methods") is not None and tables["methods"].rows:
        out.append(("methods", "Methods: accuracy against cost",
                    [table_html(tables["methods"]), figure_html(figs.get("methods"))]))
    if tables.get("stopping") is not None and tables["stopping"].rows:
        out.append(("stopping", "Tokens saved by stopping", [table_html(tables["stopping"])]))
    return out


def _comparison_md(tables: dict[str, D.Table], figs: dict[str, Figure]) -> list[str]:
    out = []
    for key, heading, _ in _comparison_html(tables, figs):
        out += [f"## {heading}", "", table_md(tables[key])]
        if key == "methods":
            out.append(figure_md(figs.get("methods")))
    return out


def render_html(run: D.Run, tables: dict[str, D.Table], figs: dict[str, Figure],
                tr: Transcript | None) -> str:
    title = run.config.get("experiment") or run.root.name
    sections = [
        ("facts", "Run", [table_html(tables["facts"]), table_html(tables["replicas"], empty=False),
                          "<details><summary>all of run_info.json</summary>",
                          table_html(tables["run_info"]), "</details>"]),
    ]
    if tables["plan"].rows or tables["plan"].note:  # the run planned itself
        plan = tables["plan"]
        body = table_html(plan) if plan.rows else f'<p class="note">{_e(plan.note)}</p>'  # a plan that failed
        sections.append(("plan", "Plan vs run", [body]))
    sections.append(("main", "Accuracy by configuration",
                     [table_html(tables["main"]), figure_html(figs.get("accuracy"))]))
    if "sweep_T" in figs or "sweep_top_k" in figs:
        sections.append(("sweep", "Sweep: accuracy against T and top-k",
                         [figure_html(figs.get("sweep_T")), figure_html(figs.get("sweep_top_k"))]))
    sections.append(("tokens", "Tokens and efficiency",
                     [table_html(tables["tokens"]), figure_html(figs.get("tokens"))]))
    sections += _comparison_html(tables, figs)
    sections += [
        ("transitions", "Answer changes after peer messages",
         [table_html(tables["transitions"]), figure_html(figs.get("transitions"))]),
        ("pass_at_k", "pass@k", [figure_html(figs.get("pass_at_k")), table_html(tables["pass_at_k"])]),
        ("problems", "Per problem", ["<details><summary>show the table</summary>",
                                     table_html(tables["problems"]), "</details>"]),
        ("transcript", "Transcript", [transcript_html(tr)]),
    ]
    nav = "".join(f'<a href="#{k}">{_e(t)}</a>' for k, t, _ in sections)
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>LeaP report: {_e(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>LeaP report: {_e(title)}</h1>",
           f'<p class="sub">{_e(run.root.resolve())} · written {_e(time.strftime("%Y-%m-%d %H:%M"))}'
           f" · metrics from summary.json, run facts from run_info.json and config.json</p>", f"<nav>{nav}</nav>"]
    if run.notices():
        out.append('<p class="incomplete">' + "<br>".join(_e(d) for d in run.notices()) + "</p>")
    if run.derived:
        out.append('<p class="derived">' + "<br>".join(_e(d) for d in run.derived) + "</p>")
    if D.ungraded_note(run):
        out.append(f'<p class="ungraded">{_e(D.ungraded_note(run))}</p>')
    for key, heading, body in sections:
        out.append(f'<section id="{key}"><h2>{_e(heading)}</h2>')
        out += [b for b in body if b]
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- Markdown


def table_md(t: D.Table) -> str:
    if not t.rows:
        return f"_{md_text(t.title)}: nothing to show for this run._\n"
    headers = list(t.headers)
    if any(label for label, _ in t.groups):
        i = 0
        for label, span in t.groups:
            for j in range(i, i + span):
                if label:
                    headers[j] = f"{label} {headers[j]}"
            i += span
    lines = [f"<!-- table:{t.key} -->", "| " + " | ".join(md_text(h) for h in headers) + " |",
             "|" + "|".join("---:" if c.kind in D.NUMERIC else "---" for c in t.rows[0]) + "|"]
    for row in t.rows:
        lines.append("| " + " | ".join(md_text(c.text) for c in row) + " |")
    if t.note:
        lines += ["", f"_{md_text(t.note)}_"]
    return "\n".join(lines) + "\n"


def figure_md(fig: Figure | None) -> str:
    return f"![{md_text(fig.caption)}]({PLOT_DIR}/{fig.name})\n" if fig is not None else ""


def transcript_md(tr: Transcript | None) -> str:
    if tr is None:
        return "_No path received peer messages in this run: nothing to show._\n"
    row = tr.row
    # every string here may come from the dataset, the model or the config: code spans or escaped
    out = [f"Configuration {md_code(tr.point)}, {md_text(tr.benchmark)} problem {md_code(tr.problem_id)}, "
           f"path {tr.path}: gold {md_code(row.get('gold'))}, final answer {md_code(row.get('answer'))} "
           f"({'ungraded' if row.get('correct') is None else 'correct' if row.get('correct') else 'wrong'}), finished by {md_text(row.get('finish_reason'))}. "
           f"Cut by {'character spans (exact)' if tr.method == 'spans' else 'tags and prompt wording'}.", ""]
    for b in tr.blocks:
        out.append(f"**{md_text(_block_title(b))}**")
        out.append("")
        if b.kind == "comment" and b.notes:
            for n in b.notes:
                who = f"path {n.sender}" if n.sender is not None else "unknown sender"
                sim = f", similarity {n.similarity:.3f}" if n.similarity is not None else ""
                check = "matches its summary" if n.verified else "not matched to a message"
                out.append(f"- Peer {n.rank} ← {who}{sim} ({check}): {md_text(n.text)}")
        else:
            out.append(md_fence(b.text))
        out.append("")
    return "\n".join(out)


def render_md(run: D.Run, tables: dict[str, D.Table], figs: dict[str, Figure],
              tr: Transcript | None) -> str:
    title = run.config.get("experiment") or run.root.name
    out = [f"# LeaP report: {md_text(title)}", "",
           f"{md_code(run.root.resolve())} · metrics from summary.json, run facts from run_info.json and config.json", ""]
    for d in run.notices():  # the reasons quote errors, which may quote model or dataset text
        out += [f"> **{md_text(d)}**" if d.startswith("Incomplete") else f"> {md_text(d)}", ""]
    for d in run.derived:
        out += [f"> {md_text(d)}", ""]
    if D.ungraded_note(run):
        out += [f"> **Ungraded:** {md_text(D.ungraded_note(run))}", ""]
    out += ["## Run", "", table_md(tables["facts"])]
    if tables["replicas"].rows:
        out += ["", table_md(tables["replicas"])]
    if tables["plan"].rows:
        out += ["## Plan vs run", "", table_md(tables["plan"])]
    elif tables["plan"].note:
        out += ["## Plan vs run", "", f"_{md_text(tables['plan'].note)}_", ""]
    out += [
            "## Accuracy by configuration", "", table_md(tables["main"]), figure_md(figs.get("accuracy"))]
    if "sweep_T" in figs or "sweep_top_k" in figs:
        out += ["## Sweep: accuracy against T and top-k", "", figure_md(figs.get("sweep_T")),
                figure_md(figs.get("sweep_top_k"))]
    out += ["## Tokens and efficiency", "", table_md(tables["tokens"]), figure_md(figs.get("tokens"))]
    out += _comparison_md(tables, figs)
    out += ["## Answer changes after peer messages", "", table_md(tables["transitions"]),
            figure_md(figs.get("transitions")),
            "## pass@k", "", figure_md(figs.get("pass_at_k")), table_md(tables["pass_at_k"]),
            "## Per problem", "", table_md(tables["problems"]),
            "## Transcript", "", transcript_md(tr)]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- entry point


def write_report(output_dir: str | Path, point: str | None = None, problem: str | None = None,
                 path: int | None = None, plots: bool = True) -> dict[str, Path | list[Path] | str]:
    """Load OUTPUT_DIR and write its report (see `write_run_report`)."""
    return write_run_report(D.load_run(output_dir), point, problem, path, plots)


def write_run_report(run: D.Run, point: str | None = None, problem: str | None = None,
                     path: int | None = None, plots: bool = True) -> dict[str, Path | list[Path] | str]:
    """Write the run's report.html, report.md and plots/*.png into its directory; returns
    {"html": ..., "md": ..., "plots": [...], "text": `text.console_text`, the tables a run prints
    when it ends}. `point`, `problem`, `path` choose the transcript (default: a path that received
    peer notes and changed its answer); `plots=False` leaves the figures out (the tables and
    transcript only)."""
    root = run.root
    if not run.summary:
        raise ValueError(f"{root} has no summary.json (or it is empty): nothing to report")
    tables = report_tables(run)
    figs = figures(run) if plots else {}
    chosen = point is not None or problem is not None or path is not None
    try:
        tr = load_transcript(run, point, problem, path) if (root / "paths.parquet").is_file() else None
    except ValueError:
        if chosen:
            raise  # the user's choice names no path: say so
        tr = None
    except Exception as exc:  # the transcript is one section; the rest of the report stands
        log.warning("transcript not built: %s", exc)
        tr = None
    pngs = write_figures(figs, root / PLOT_DIR)
    html_path, md_path = root / "report.html", root / "report.md"
    html_path.write_text(render_html(run, tables, figs, tr), encoding="utf-8")
    md_path.write_text(render_md(run, tables, figs, tr), encoding="utf-8")
    return {"html": html_path, "md": md_path, "plots": pngs, "text": console_text(run, tables)}


__all__ = ["PLOT_DIR", "Transcript", "choose_path", "load_transcript", "render_html", "render_md",
           "write_report", "write_run_report"]
