// Live updates for the listener's dashboard: counts, chart and job lists, from the /api/ endpoints.
// Everything from the server goes into the page as text (textContent), never as markup.
(function () {
  "use strict";
  var SUMMARY_EVERY = 2000, JOBS_EVERY = 5000;
  var params = new URLSearchParams(window.location.search);
  var chart = null;

  function byId(id) { return document.getElementById(id); }
  function setText(id, value) { var el = byId(id); if (el) { el.textContent = value == null ? "" : String(value); } }

  function getJSON(url) {
    return fetch(url, {credentials: "same-origin", cache: "no-store"}).then(function (r) {
      if (!r.ok) { throw new Error(url + ": " + r.status); }
      return r.json();
    });
  }

  function uptime(startedAt) {
    if (!startedAt) { return "-"; }
    var s = Math.max(0, Math.floor(Date.now() / 1000 - startedAt));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h + "h " + (m < 10 ? "0" : "") + m + "m " + (sec < 10 ? "0" : "") + sec + "s";
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    if (className) { td.className = className; }
    td.textContent = text == null ? "" : String(text);
    row.appendChild(td);
    return td;
  }

  function jobLink(row, jobId) {
    var td = document.createElement("td"), a = document.createElement("a");
    a.href = "/jobs/" + encodeURIComponent(jobId);
    a.textContent = jobId;
    td.appendChild(a);
    row.appendChild(td);
  }

  function fill(tableId, rows, columns, emptyText) {
    var table = byId(tableId);
    if (!table) { return; }
    var body = document.createElement("tbody");
    rows.forEach(function (item) { body.appendChild(columns(item)); });
    if (!rows.length) {
      var tr = document.createElement("tr"), td = cell(tr, emptyText);
      tr.className = "empty";
      td.colSpan = table.tHead.rows[0].cells.length;
      body.appendChild(tr);
    }
    table.replaceChild(body, table.tBodies[0]);
  }

  function errorParts(error) {
    var m = /^([A-Za-z_][\w.]*): ([\s\S]*)$/.exec(error || "");
    return m ? [m[1], m[2]] : ["", error || ""];
  }

  function when(stamp) { return (stamp || "").replace("T", " "); }

  function short(text, limit) { text = text || ""; return text.length > limit ? text.slice(0, limit) + "\u2026" : text; }

  function jobRow(job) {
    var tr = document.createElement("tr");
    jobLink(tr, job.job_id);
    var status = document.createElement("span");
    status.className = "status status-" + job.status;
    status.textContent = job.status;
    var td = document.createElement("td");
    td.appendChild(status);
    tr.appendChild(td);
    cell(tr, when(job.started_at), "nowrap");
    cell(tr, job.duration_s == null ? "" : job.duration_s.toFixed(3) + " s", "nowrap");
    cell(tr, job.attempts, "nowrap");
    cell(tr, job.topic);
    cell(tr, short(job.error, 200));
    return tr;
  }

  function failedRow(job) {
    var tr = document.createElement("tr"), parts = errorParts(job.error);
    jobLink(tr, job.job_id);
    cell(tr, parts[0], "error-type");
    cell(tr, short(parts[1], 300));
    cell(tr, when(job.completed_at), "nowrap");
    return tr;
  }

  function workerRow(w) {
    var tr = document.createElement("tr");
    cell(tr, w.index);
    cell(tr, w.pid);
    cell(tr, w.ready ? "ready" : (w.alive ? "up" : "down"), w.ready ? "ok" : "bad");
    cell(tr, w.restarts);
    return tr;
  }

  function showSummary(data) {
    var o = data.overview, m = data.metrics;
    Object.keys(data.counts).forEach(function (name) { setText("count-" + name, data.counts[name]); });
    var state = byId("state");
    if (state) {
      state.textContent = "";
      var badge = document.createElement("span");
      badge.className = "badge state-" + o.state;
      badge.textContent = o.state;
      state.appendChild(badge);
    }
    setText("uptime", uptime(o.started_at));
    setText("received", m.messages_received);
    setText("rejected", m.messages_rejected);
    setText("in-flight", m.in_flight);
    setText("queue-depth", m.queue_depth);
    if (o.workers) { fill("workers-table", o.workers, workerRow, "no worker"); }
    document.body.setAttribute("data-updated", String(Date.now()));
  }

  function showSeries(series) {
    var el = byId("chart");
    if (!el || typeof uPlot === "undefined") { return; }
    var data = [series.t, series.jobs_per_s, series.failed_per_s, series.p95_ms];
    if (!chart) {
      chart = new uPlot({
        width: Math.max(320, el.clientWidth || 640), height: 220,
        series: [{}, {label: "jobs/s", stroke: "#2a7ae2", width: 2, scale: "rate"},
                 {label: "failed/s", stroke: "#d43f3a", width: 1, scale: "rate"},
                 {label: "p95 ms", stroke: "#8a6d3b", width: 1, dash: [4, 4], scale: "ms"}],
        axes: [{}, {scale: "rate", label: "jobs/s"}, {scale: "ms", side: 1, label: "ms", grid: {show: false}}],
        scales: {rate: {range: function (u, min, max) { return [0, Math.max(1, max)]; }}}
      }, data, el);
      el.setAttribute("data-points", String(series.t.length));
    } else {
      chart.setData(data);
      el.setAttribute("data-points", String(series.t.length));
    }
  }

  function pageLink(listing, target, label) {
    var q = new URLSearchParams(), a = document.createElement("a");
    if (listing.status) { q.set("status", listing.status); }
    if (listing.q) { q.set("q", listing.q); }
    q.set("page", String(target));
    a.href = "/?" + q.toString();
    a.rel = label;
    a.textContent = label;
    return a;
  }

  function showPager(listing) {
    var nav = byId("pager");
    if (!nav) { return; }
    nav.textContent = "";
    if (listing.page > 1) { nav.appendChild(pageLink(listing, listing.page - 1, "prev")); nav.appendChild(document.createTextNode(" ")); }
    var of = document.createElement("span"), matching = document.createElement("span");
    of.id = "page-of";
    of.textContent = "page " + listing.page + " of " + listing.pages;
    matching.id = "matching";
    matching.textContent = String(listing.total);
    nav.appendChild(of);
    nav.appendChild(document.createTextNode(" ("));
    nav.appendChild(matching);
    nav.appendChild(document.createTextNode(" matching) "));
    if (listing.page < listing.pages) { nav.appendChild(pageLink(listing, listing.page + 1, "next")); }
  }

  function showJobs(data) {
    var listing = data.listing;
    if (listing) {
      fill("jobs-table", listing.jobs, jobRow, "no job matches");
      showPager(listing);
    }
    if (data.failed) { fill("failed-table", data.failed, failedRow, "no failed job"); }
  }

  function jobsUrl() {
    var q = new URLSearchParams();
    ["status", "q", "page"].forEach(function (k) { if (params.get(k)) { q.set(k, params.get(k)); } });
    return "/api/jobs?" + q.toString();
  }

  function tick(what) {
    if (document.hidden) { return; }
    if (what === "summary") {
      getJSON("/api/summary").then(showSummary).catch(function () {});
      getJSON("/api/series").then(showSeries).catch(function () {});
    } else if (byId("jobs-table") || byId("failed-table")) {
      getJSON(jobsUrl()).then(showJobs).catch(function () {});
    }
  }

  if (!byId("counts")) { return; }  // a job's page: nothing moves
  tick("summary");
  setInterval(function () { tick("summary"); }, SUMMARY_EVERY);
  setInterval(function () { tick("jobs"); }, JOBS_EVERY);
}());
