// The live dashboard: the last five minutes from /dashboard/api/history, then
// one snapshot a second from /dashboard/events (SSE). Charts are uPlot.
// ?view=cluster (the default: every node's sums) or ?view=node (this node),
// switched in the header when the cluster has more than one node.
(function () {
  "use strict";

  var view = new URLSearchParams(location.search).get("view") === "node" ? "node" : "cluster";

  var WINDOW = 300;  // seconds of history kept on the charts
  var $ = function (id) { return document.getElementById(id); };
  var fmt = new Intl.NumberFormat();
  var cols = { t: [], published: [], delivered: [], p50: [], p95: [], p99: [], connections: [], errors: [] };
  var charts = [];

  var COLORS = { published: "#4c6ef5", delivered: "#12b886", p50: "#15aabf", p95: "#f59f00",
                 p99: "#e03131", connections: "#7048e8", errors: "#e03131" };

  var CLOCK = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  function clock(t) { return CLOCK.format(new Date(t * 1000)); }

  // The y axis's width: its longest label at 7 px a character, plus the ticks.
  function labelWidth(u, values) {
    var longest = (values || []).reduce(function (n, v) { return Math.max(n, String(v).length); }, 1);
    return Math.max(40, longest * 7 + 20);
  }

  function isolated(u, sidx) {
    var d = u.data[sidx], out = [];
    for (var i = 0; i < d.length; i++) {
      if (d[i] != null && (i === 0 || d[i - 1] == null) && (i === d.length - 1 || d[i + 1] == null)) out.push(i);
    }
    return out.length ? out : null;
  }

  function chart(el, series, unit) {
    var opts = {
      width: el.clientWidth || 400, height: 190,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(1, max * 1.15)]; } } },
      // One line of labels per axis, each given room for its widest label:
      // uPlot's default time labels add a date row whose labels collide where
      // a minute or day turns near another tick.
      axes: [
        { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e6e8ec" }, space: 70,
          values: function (u, splits) { return splits.map(clock); } },
        { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e6e8ec" }, space: 30,
          size: labelWidth,
          values: function (u, vals) { return vals.map(function (v) { return fmt.format(v) + unit; }); } },
      ],
      series: [{}].concat(series.map(function (name) {
        // A second with no deliveries has no latency: the line breaks there, and a
        // sample alone between such gaps is drawn as a dot (a line needs two).
        return { label: name, stroke: COLORS[name], width: 2, spanGaps: false,
                 points: { show: false, size: 6, fill: COLORS[name], filter: isolated },
                 fill: series.length === 1 ? COLORS[name] + "14" : undefined,
                 value: function (u, v) { return v == null ? "–" : fmt.format(v) + unit; } };
      })),
    };
    var u = new uPlot(opts, [cols.t].concat(series.map(function (s) { return cols[s]; })), el);
    u._names = series;
    charts.push(u);
    return u;
  }

  function redraw() {
    charts.forEach(function (u) {
      u.setData([cols.t].concat(u._names.map(function (s) { return cols[s]; })));
    });
  }

  function append(p) {
    if (!p || (cols.t.length && p.t <= cols.t[cols.t.length - 1])) return;
    for (var k in cols) cols[k].push(p[k] === undefined ? null : p[k]);
    if (cols.t.length > WINDOW) for (var j in cols) cols[j].shift();
    redraw();
  }

  // -- the numbers -----------------------------------------------------------
  function num(v, digits) {
    if (v == null) return "–";
    return digits ? v.toFixed(digits) : fmt.format(Math.round(v));
  }

  function round1(v) { return Math.round(v * 10) / 10; }

  function set(id, text) { $(id).textContent = text; }

  function cells(tr, values) {
    values.forEach(function (v) {
      var td = document.createElement("td");
      if (typeof v === "number") td.className = "n";
      td.textContent = typeof v === "number" ? fmt.format(v) : (v == null ? "–" : String(v));
      tr.appendChild(td);
    });
  }

  function table(id, rows, toCells, empty) {
    var body = $(id);
    var trs = rows.map(function (r) { var tr = document.createElement("tr"); cells(tr, toCells(r)); return tr; });
    if (!trs.length) {
      var tr = document.createElement("tr"), td = document.createElement("td");
      td.colSpan = 6; td.className = "none"; td.textContent = empty;
      tr.appendChild(td); trs = [tr];
    }
    body.replaceChildren.apply(body, trs);
  }

  function uptime(s) {
    if (s == null) return "–";
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function showView(snap) {
    var summed = snap.summed > 1;
    $("view-switch").hidden = !summed && snap.nodes.length < 2;
    document.querySelectorAll("#view-switch button").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.dataset.view === view));
    });
    var note = $("view-note");
    note.hidden = $("view-switch").hidden;
    note.textContent = summed ?
      "Cluster: the sums of " + snap.summed + " nodes, a second behind this node's own; " +
      "latency over every delivery of the cluster." :
      view === "node" ? "This node only: " + snap.node + "." : "Cluster: only this node is reporting.";
    document.querySelectorAll(".node-only").forEach(function (el) { el.hidden = !summed; });
  }

  function show(snap) {
    var p = snap.point || {};
    set("scope", snap.scope === "*" ? "All apps" : "App " + snap.scope);
    showView(snap);
    set("where", "node " + snap.node + " · up " + uptime(snap.uptime_s));
    set("published-rate", num(p.published, p.published < 10 ? 1 : 0));
    set("delivered-rate", num(p.delivered, p.delivered < 10 ? 1 : 0));
    set("published-total", num(snap.totals.published));
    set("delivered-total", num(snap.totals.delivered));
    set("replayed-total", num(snap.totals.replayed));
    var lat = snap.latency_10s;
    set("p99", num(lat.p99, 1)); set("p95", num(lat.p95, 1)); set("p50", num(lat.p50, 1));
    set("connections", num(snap.connections.total));
    set("ws", num(snap.connections.ws)); set("sse", num(snap.connections.sse));
    set("queued", num(snap.queues.queued)); set("deepest", num(snap.queues.deepest));
    set("slow", num(snap.totals.slow_consumers));
    set("errors-rate", num(p.errors, 1)); set("errors-total", num(snap.totals.errors));

    table("apps", snap.apps, function (a) {
      var label = !a.app ? "(no app: refused before auth)" :
                  a.name === a.app ? a.app : a.name + " (" + a.app + ")";
      return [label, a.connections, round1(a.published_per_s), round1(a.delivered_per_s),
              a.p99_ms == null ? null : round1(a.p99_ms), a.errors_per_min];
    }, "No traffic yet");
    table("topics", snap.topics, function (t) {
      return [t.topic, t.app, t.published_per_min, t.connections];
    }, "No topic traffic in the last minute");
    table("errors", snap.errors, function (e) {
      return [new Date(e.t * 1000).toLocaleTimeString(), e.code, e.status || "stream",
              e.app || "–", e.where];
    }, "No errors");
    table("nodes", snap.nodes, function (n) {
      return [n.node + (n.self ? " (this)" : ""), n.address, n.connections,
              n.published_per_s == null ? null : round1(n.published_per_s),
              n.delivered_per_s == null ? null : round1(n.delivered_per_s), uptime(n.age_s)];
    }, "No heartbeat yet");
    set("node-count", snap.nodes.length === 1 ? "1 node" : snap.nodes.length + " nodes");
    append(p.t ? p : null);
  }

  function setLive(state) {
    var el = $("live");
    el.dataset.state = state;
    el.textContent = state;
  }

  // -- the data --------------------------------------------------------------
  var source = null;

  function toLogin() { location.assign("/dashboard/login?reason=expired"); }

  function listen() {
    if (source) source.close();  // the other view's, when the switch was quicker than a load
    source = new EventSource("/dashboard/events?view=" + view);
    source.addEventListener("snapshot", function (m) {
      setLive("live");
      show(JSON.parse(m.data));
    });
    source.onerror = function () {
      setLive("reconnecting");
      if (source.readyState !== EventSource.CLOSED) return;   // the browser retries by itself
      // Refused (the session ended, or the node is gone): find out which.
      fetch("/dashboard/api/snapshot?view=" + view, { cache: "no-store" }).then(function (r) {
        if (r.status === 401 || r.status === 403) return toLogin();
        setTimeout(listen, 2000);
      }, function () { setTimeout(listen, 2000); });
    };
  }

  // The history of the current view, then its live snapshots.
  function load() {
    fetch("/dashboard/api/history?view=" + view, { cache: "no-store" }).then(function (r) {
      if (r.status === 401 || r.status === 403) { toLogin(); return null; }
      return r.json();
    }).then(function (doc) {
      if (!doc) return;
      var s = doc.series;
      for (var k in cols) cols[k] = (s[k] || []).slice(-WINDOW);
      if (charts.length) {
        redraw();
      } else {
        chart($("chart-rates"), ["published", "delivered"], "");
        chart($("chart-latency"), ["p50", "p95", "p99"], "");
        chart($("chart-connections"), ["connections"], "");
        chart($("chart-errors"), ["errors"], "");
        if (window.ResizeObserver) {
          new ResizeObserver(function () {
            charts.forEach(function (u) { u.setSize({ width: u.root.parentNode.clientWidth, height: 190 }); });
          }).observe(document.querySelector(".charts"));
        }
      }
      listen();
    });
  }

  document.querySelectorAll("#view-switch button").forEach(function (b) {
    b.addEventListener("click", function () {
      if (b.dataset.view === view) return;
      view = b.dataset.view;
      history.replaceState(null, "", view === "node" ? "?view=node" : location.pathname);
      if (source) source.close();
      setLive("connecting");
      load();
    });
  });
  load();
})();
