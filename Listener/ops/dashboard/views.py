"""The dashboard's HTML: complete pages rendered on the server (readable with scripts off), every value escaped."""

from __future__ import annotations

import json
import re
import time
from html import escape
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote, urlencode

__all__ = ["STATUSES", "counts_of", "error_parts", "job_page", "message_page", "login_page", "overview_page", "pretty"]

STATUSES = ("pending", "running", "completed", "failed", "duplicate")
#: Characters of input or result a job's page shows (the rest is cut, and said so).
SHOWN_CHARS = 64 * 1024
_ERROR = re.compile(r"([A-Za-z_][\w.]*): (.*)", re.DOTALL)


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def error_parts(error: Optional[str]) -> Tuple[str, str]:
    """(error type, message) of a recorded error such as ``"ValueError: bad input"``."""
    if not error:
        return "", ""
    match = _ERROR.fullmatch(error)
    return (match.group(1), match.group(2)) if match else ("", error)


def pretty(value: Any) -> str:
    """JSON for a person (what a ``<pre>`` shows), cut at :data:`SHOWN_CHARS`."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=repr)
    if len(text) > SHOWN_CHARS:
        return f"{text[:SHOWN_CHARS]}\n… ({len(text) - SHOWN_CHARS} more characters not shown)"
    return text


def _page(title: str, body: str, scripts: bool = False) -> bytes:
    script = ('<script src="/assets/uPlot.iife.min.js"></script><script src="/assets/dashboard.js"></script>'
              if scripts else "")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)}</title><link rel="stylesheet" href="/assets/uPlot.min.css">'
            f'<link rel="stylesheet" href="/assets/dashboard.css"></head>'
            f'<body><header><a class="home" href="/">MQTT listener</a></header><main>{body}</main>{script}'
            f'</body></html>').encode("utf-8")


def _uptime(started_at: Optional[float]) -> str:
    if not started_at:
        return "-"
    seconds = max(0, int(time.time() - started_at))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m {rest % 60:02d}s"


def _dl(rows: Iterable[Tuple[str, str, str]]) -> str:
    return "<dl>" + "".join(f'<dt>{_e(label)}</dt><dd id="{_e(key)}">{value}</dd>' for key, label, value in rows) + "</dl>"


def _job_link(job_id: str) -> str:
    return f'<a href="/jobs/{quote(job_id, safe="")}">{_e(job_id)}</a>'


def _table(table_id: str, headers: Sequence[str], rows: List[str], empty: str) -> str:
    head = "".join(f"<th>{_e(name)}</th>" for name in headers)
    body = "".join(rows) or f'<tr class="empty"><td colspan="{len(headers)}">{_e(empty)}</td></tr>'
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _job_row(job: Mapping[str, Any]) -> str:
    duration = job.get("duration_s")
    cells = [("", _job_link(job["job_id"])),
             ("", f'<span class="status status-{_e(job["status"])}">{_e(job["status"])}</span>'),
             ("nowrap", _e(_when(job.get("started_at")))), ("nowrap", "" if duration is None else f"{duration:.3f} s"),
             ("nowrap", _e(job.get("attempts"))), ("", _e(job.get("topic"))), ("", _e(_short(job.get("error"))))]
    return "<tr>" + "".join(f'<td class="{kind}">{cell}</td>' if kind else f"<td>{cell}</td>"
                            for kind, cell in cells) + "</tr>"


def _when(stamp: Optional[str]) -> str:
    """An ISO 8601 time as people read it: ``2026-12-06 20:24:42.238``."""
    return (stamp or "").replace("T", " ")


def _short(text: Optional[str], limit: int = 200) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[:limit] + "…"


def _workers(workers: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for worker in workers:
        state = "ready" if worker.get("ready") else "up" if worker.get("alive") else "down"
        rows.append(f"<tr><td>{_e(worker['index'])}</td><td>{_e(worker.get('pid'))}</td>"
                    f"<td class=\"{'ok' if state == 'ready' else 'bad'}\">{state}</td>"
                    f"<td>{_e(worker.get('restarts'))}</td></tr>")
    return ('<section id="workers"><h2>Workers</h2>'
            + _table("workers-table", ("worker", "pid", "state", "restarts"), rows, "no worker") + "</section>")


def overview_page(overview: Mapping[str, Any], counts: Mapping[str, int], metrics: Mapping[str, Any],
                  listing: Optional[Mapping[str, Any]], failed: Optional[Sequence[Mapping[str, Any]]],
                  status: str, search: str) -> bytes:
    """The dashboard: connection, counts, chart, recent jobs (filtered and paged), failed jobs."""
    subscriptions = ", ".join(f"{topic} (QoS {qos})" for topic, qos in overview.get("subscriptions", []))
    connection = _dl([
        ("state", "State", f'<span class="badge state-{_e(overview.get("state"))}">{_e(overview.get("state"))}</span>'),
        ("broker", "Broker", _e(overview.get("broker"))),
        ("client-id", "Client id", _e(overview.get("client_id"))),
        ("subscriptions", "Subscriptions", _e(subscriptions)),
        ("job-store", "Job store", _e(overview.get("job_store"))),
        ("uptime", "Uptime", _e(_uptime(overview.get("started_at")))),
        ("version", "Version", _e(overview.get("version"))),
    ])
    tiles = "".join(f'<li class="tile status-{name}"><span class="count" id="count-{name}">{int(counts.get(name, 0))}'
                    f'</span><span class="label">{name}</span></li>' for name in STATUSES)
    totals = _dl([
        ("received", "Messages received", _e(metrics.get("messages_received", 0))),
        ("rejected", "Messages rejected", _e(metrics.get("messages_rejected", 0))),
        ("in-flight", "In flight", _e(metrics.get("in_flight", 0))),
        ("queue-depth", "Waiting", _e(metrics.get("queue_depth", 0))),
    ])
    parts = [f'<section id="connection"><h2>Listener</h2>{connection}</section>',
             f'<section id="counts"><h2>Jobs by status</h2><ul class="tiles">{tiles}</ul>{totals}</section>']
    if overview.get("workers") is not None:
        parts.append(_workers(overview["workers"]))
    parts.append('<section id="activity"><h2>Throughput and latency, last 10 minutes</h2>'
                 '<div id="chart" class="chart"></div>'
                 '<noscript><p>The chart and live updates need scripts; the rest of this page is as of loading it.'
                 '</p></noscript></section>')
    parts.append(_jobs_section(listing, status, search))
    parts.append(_failed_section(failed))
    return _page("MQTT listener dashboard", "".join(parts), scripts=True)


def _jobs_section(listing: Optional[Mapping[str, Any]], status: str, search: str) -> str:
    if listing is None:
        return ('<section id="jobs"><h2>Recent jobs</h2><p class="note">This group\'s workers keep their jobs to '
                'themselves (memory or SQLite store): use the Redis job store to list every worker\'s jobs here.'
                '</p></section>')
    options = "".join(f'<option value="{name}"{" selected" if name == status else ""}>{name}</option>'
                      for name in ("",) + STATUSES).replace('<option value="">', '<option value="">any status')
    form = (f'<form id="job-filter" method="get" action="/"><label>Status <select name="status">{options}</select>'
            f'</label> <label>Job id <input name="q" value="{_e(search)}" maxlength="200" '
            f'placeholder="search"></label> <button type="submit">Show</button></form>')
    rows = [_job_row(job) for job in listing["jobs"]]
    table = _table("jobs-table", ("job id", "status", "started", "duration", "attempts", "topic", "error"), rows,
                   "no job matches")
    page, pages = int(listing["page"]), int(listing["pages"])

    def link(target: int, label: str) -> str:
        query = urlencode({key: value for key, value in (("status", status), ("q", search), ("page", target)) if value})
        return f'<a href="/?{_e(query)}" rel="{label}">{label}</a>'

    pager = (f'<nav class="pager" id="pager">{link(page - 1, "prev") if page > 1 else ""} '
             f'<span id="page-of">page {page} of {pages}</span> (<span id="matching">{int(listing["total"])}</span> '
             f'matching) {link(page + 1, "next") if page < pages else ""}</nav>')
    note = (f'<p class="note">Listing the newest {int(listing["scanned"])} jobs the store holds.</p>'
            if listing.get("truncated") else "")
    return f'<section id="jobs"><h2>Recent jobs</h2>{form}{table}{pager}{note}</section>'


def _failed_section(failed: Optional[Sequence[Mapping[str, Any]]]) -> str:
    if failed is None:
        return ""
    rows = []
    for job in failed:
        kind, message = error_parts(job.get("error"))
        rows.append(f"<tr><td>{_job_link(job['job_id'])}</td><td class=\"error-type\">{_e(kind)}</td>"
                    f"<td>{_e(_short(message, 300))}</td><td class=\"nowrap\">{_e(_when(job.get('completed_at')))}</td></tr>")
    return ('<section id="failed"><h2>Failed jobs</h2>'
            + _table("failed-table", ("job id", "error type", "message", "finished"), rows, "no failed job")
            + "</section>")


def job_page(job: Mapping[str, Any], input_kept: bool) -> bytes:
    """One job: status, timings, attempts, topic, input (when kept), result and error."""
    kind, message = error_parts(job.get("error"))
    duration = job.get("duration_s")
    facts = _dl([
        ("job-id", "Job id", _e(job["job_id"])),
        ("job-status", "Status", f'<span class="status status-{_e(job["status"])}">{_e(job["status"])}</span>'),
        ("job-topic", "Topic", _e(job.get("topic"))),
        ("job-started", "Received", _e(_when(job.get("started_at")))),
        ("job-completed", "Finished", _e(_when(job.get("completed_at")) or "-")),
        ("job-duration", "Duration", "-" if duration is None else f"{duration:.3f} s"),
        ("job-attempts", "Attempts", _e(job.get("attempts"))),
        ("job-duplicates", "Arrived again", _e(job.get("duplicate_count"))),
    ])
    if job.get("input") is not None:
        data = f'<pre id="job-input">{_e(pretty(job["input"]))}</pre>'
    elif not input_kept:
        data = ('<p id="job-input" class="note">Not kept: a finished job\'s input is dropped unless '
                '<code>keep_job_input = true</code>.</p>')
    else:
        data = '<p id="job-input" class="note">No input recorded.</p>'
    result = f'<pre id="job-result">{_e(pretty(job.get("result")))}</pre>' if job.get("result") is not None else \
        '<p id="job-result" class="note">No result.</p>'
    error = (f'<section id="job-error"><h2>Error</h2><p class="error-type">{_e(kind)}</p>'
             f'<pre class="error-message">{_e(message)}</pre></section>' if job.get("error") else "")
    body = (f'<h1>Job <span class="job-id">{_e(job["job_id"])}</span></h1>{facts}{error}'
            f'<section><h2>Input</h2>{data}</section><section><h2>Result</h2>{result}</section>')
    return _page(f"Job {job['job_id']}", body)


def message_page(title: str, text: str) -> bytes:
    """A page that only says something (unknown job, dashboard closed)."""
    return _page(title, f'<h1>{_e(title)}</h1><p class="note">{_e(text)}</p>')


def login_page(failed: bool = False) -> bytes:
    """The token form (the token goes in a POST body, never in a URL)."""
    warning = '<p class="bad" id="login-failed">That token is not the one configured.</p>' if failed else ""
    return _page("Sign in", f'<h1>Dashboard token</h1>{warning}<form id="login" method="post" action="/login">'
                            f'<label>Token <input type="password" name="token" autocomplete="current-password" '
                            f'required></label> <button type="submit">Open the dashboard</button></form>'
                            f'<p class="note">The token is the listener\'s <code>http_token</code> '
                            f'(<code>MQTT_HTTP_TOKEN</code> or <code>http_token_file</code>).</p>')


def counts_of(metrics: Mapping[str, Any]) -> Dict[str, int]:
    """Jobs held, by status, with every status present."""
    held = metrics.get("jobs") or {}
    return {name: int(held.get(name, 0)) for name in STATUSES}
