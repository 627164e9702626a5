// The audit log page: the app's records newest first from
// /dashboard/api/audit, filtered by action and time, older pages on demand.
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var TIME = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit" });
  // the actions the server records (tidings/core/audit.py), for the filter
  var ACTIONS = ["app.create", "key.create", "key.rotate", "key.revoke", "signing_secret.rotate",
    "webhook.create", "webhook.rotate_secret", "webhook.delete", "caps.update", "categories.update",
    "dead_letter.retry", "tokens.revoke", "token.revoke", "node.drain", "node.undrain", "node.shed",
    "dashboard.login", "dashboard.login_failed", "dashboard.logout", "secrets.seal",
    "secrets.unseal", "secrets.rekey"];
  var next = null;

  function text(tag, value, cls) {
    var el = document.createElement(tag);
    el.textContent = value == null || value === "" ? "–" : String(value);
    if (cls) el.className = cls;
    return el;
  }

  function show(message) {
    $("message").textContent = message;
    $("message").hidden = !message;
  }

  function details(d) {
    return Object.keys(d).map(function (k) {
      var v = d[k];
      return k + ": " + (Array.isArray(v) ? v.join(", ") : typeof v === "object" ? JSON.stringify(v) : v);
    }).join(" · ");
  }

  function row(r) {
    var tr = document.createElement("tr");
    tr.className = "record " + r.action.replace(".", "-");
    tr.appendChild(text("td", TIME.format(new Date(r.at))));
    tr.appendChild(text("td", r.action, "action"));
    tr.appendChild(text("td", r.target));
    tr.appendChild(text("td", r.actor));
    tr.appendChild(text("td", r.address));
    tr.appendChild(text("td", details(r.details)));
    return tr;
  }

  function query(before) {
    var q = new URLSearchParams();
    if ($("action").value) q.set("action", $("action").value);
    if ($("since").value) q.set("since", new Date($("since").value).toISOString());
    if (before) q.set("before", before);
    return q;
  }

  function load(before) {
    var q = query(before);
    if (!before) {
      var shown = query(null).toString();
      history.replaceState(null, "", shown ? "?" + shown : location.pathname);
    }
    show("");
    return fetch("/dashboard/api/audit?" + q.toString(), { credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { location.href = "/dashboard/login?reason=expired"; return null; }
        return r.json().then(function (doc) { return { ok: r.ok, doc: doc }; });
      })
      .then(function (res) {
        if (!res) return;
        if (!res.ok) { show(res.doc.error ? res.doc.error.message : "request failed"); return; }
        var body = $("records");
        if (!before) body.textContent = "";
        res.doc.records.forEach(function (r) { body.appendChild(row(r)); });
        $("where").textContent = "Audit log · app " + res.doc.app;
        $("empty").hidden = body.children.length > 0;
        next = res.doc.next_before;
        $("more").hidden = !next;
      })
      .catch(function (err) { show("request failed: " + err); });
  }

  ACTIONS.forEach(function (a) {
    var o = document.createElement("option");
    o.value = o.textContent = a;
    $("action").appendChild(o);
  });
  var params = new URLSearchParams(location.search);
  if (params.get("action")) $("action").value = params.get("action");
  $("filters").addEventListener("submit", function (ev) { ev.preventDefault(); load(null); });
  $("more").addEventListener("click", function () { if (next) load(next); });
  load(null);
}());
