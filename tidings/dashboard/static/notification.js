// The notification page: search a notification by id, show its delivery
// counts and recipients, and draw one user's timeline (accepted, committed,
// receipts, state changes, outbound attempts) from /dashboard/api/notification.
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var TIME = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3 });
  var CLOCK = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit",
    fractionalSecondDigits: 3 });
  var LABELS = { accepted: "Accepted", committed: "Committed", delivered: "Delivered",
    displayed: "Displayed", seen: "Seen", read: "Read", archived: "Archived", queued: "Queued",
    attempt: "Attempt" };

  function text(tag, value, cls) {
    var el = document.createElement(tag);
    el.textContent = value == null ? "–" : String(value);
    if (cls) el.className = cls;
    return el;
  }

  function show(message) {
    $("message").textContent = message;
    $("message").hidden = !message;
  }

  // "+1.234 s", "+12 ms", "+3 min 4 s": how long after the publish was accepted
  function after(ms) {
    if (ms < 0) return "−" + after(-ms).slice(1);
    if (ms < 1000) return "+" + Math.round(ms) + " ms";
    if (ms < 60000) return "+" + (ms / 1000).toFixed(3) + " s";
    if (ms < 3600000) return "+" + Math.floor(ms / 60000) + " min " + Math.round(ms % 60000 / 1000) + " s";
    return "+" + (ms / 3600000).toFixed(1) + " h";
  }

  // "Chrome on Linux · 3f9a01c2…": a device's label and enough of its id to
  // tell two alike apart (ids the server gave, "~…", are short already)
  function device(e) {
    if (!e.device) return "a device (from before devices were recorded)";
    var id = e.device.length > 12 ? e.device.slice(0, 8) + "…" : e.device;
    return e.label ? e.label + " · " + id : id;
  }

  function detail(e) {
    if (e.event === "delivered" || e.event === "displayed") return device(e);
    if (e.event === "attempt") {
      var out = e.channel + " #" + e.attempt + ": " + e.result;
      if (e.error) out += " (" + e.error + ")";
      if (e.next_retry) out += " · next retry " + CLOCK.format(new Date(e.next_retry));
      return out;
    }
    if (e.event === "queued") {
      return e.channel + " · next attempt " + CLOCK.format(new Date(e.next_attempt)) +
        " · " + e.attempts + " attempts so far";
    }
    return "";
  }

  function kind(e) {
    if (e.event === "attempt") return e.result === "sent" ? "ok" : e.result === "dead" ? "bad" : "warn";
    return e.event === "queued" ? "warn" : "ok";
  }

  function counts(doc) {
    var body = $("counts");
    body.textContent = "";
    var inApp = doc.delivery.in_app || {};
    var rows = [["in_app", inApp.recipients, inApp.delivered, inApp.acknowledged, inApp.displayed,
                 inApp.seen, inApp.read, null, null]];
    Object.keys(doc.outbound_users || {}).sort().forEach(function (ch) {
      var u = doc.outbound_users[ch];
      rows.push([ch, u.queued, null, null, null, null, null, u.sent, u.failed]);
    });
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      tr.appendChild(text("td", r[0]));
      for (var i = 1; i < r.length; i++) tr.appendChild(text("td", r[i], "n"));
      body.appendChild(tr);
    });
  }

  function recipients(doc) {
    var box = $("recipients");
    box.textContent = "";
    $("recipient-count").textContent = doc.recipients + (doc.fanout === "read" ? " (a feed item: its audience)" : "");
    doc.recipient_sample.forEach(function (user) {
      var b = text("button", user, "chip");
      b.type = "button";
      b.addEventListener("click", function () { $("user").value = user; search(); });
      box.appendChild(b);
    });
    if (!doc.recipient_sample.length) box.appendChild(text("p", "No personal inbox entries; type a user above.", "sub"));
  }

  // The track: each event a dot on a line, placed by its time on a square-root
  // scale (milliseconds and hours on one line), its label beneath.
  function track(events) {
    var el = $("track");
    el.textContent = "";
    var t0 = Date.parse(events[0].at);
    var span = Math.max(1, Date.parse(events[events.length - 1].at) - t0);
    var line = document.createElement("div");
    line.className = "line";
    el.appendChild(line);
    events.forEach(function (e, i) {
      var dt = Math.max(0, Date.parse(e.at) - t0);
      var mark = document.createElement("div");
      // labels take turns on four rows, two above the line and two below,
      // so events close in time do not write over each other
      mark.className = "mark " + kind(e) + " row" + (i % 4);
      mark.style.left = (2 + 96 * Math.sqrt(dt / span)) + "%";
      mark.appendChild(text("span", e.event === "attempt" ? e.channel + " #" + e.attempt : LABELS[e.event] || e.event, "label"));
      mark.title = e.event + " " + after(dt) + (e.event === "delivered" || e.event === "displayed" ? " · " + device(e) : "");
      el.appendChild(mark);
    });
  }

  function timeline(tl) {
    $("timeline-card").hidden = false;
    $("tl-user").textContent = tl.user;
    $("tl-note").textContent = tl.recipient === false ? "not a recipient" : tl.status !== "published" ? tl.status : "";
    var body = $("events");
    body.textContent = "";
    var t0 = Date.parse(tl.events[0].at);
    tl.events.forEach(function (e) {
      var tr = document.createElement("tr");
      tr.className = "event " + kind(e);
      tr.appendChild(text("td", TIME.format(new Date(e.at))));
      tr.appendChild(text("td", after(Date.parse(e.at) - t0), "n"));
      tr.appendChild(text("td", LABELS[e.event] || e.event));
      tr.appendChild(text("td", detail(e)));
      body.appendChild(tr);
    });
    track(tl.events);
  }

  function search() {
    var q = new URLSearchParams();
    q.set("id", $("nid").value.trim());
    if ($("user").value.trim()) q.set("user", $("user").value.trim());
    if ($("app").value.trim()) q.set("app", $("app").value.trim());
    history.replaceState(null, "", "?" + q.toString());
    show("");
    return fetch("/dashboard/api/notification?" + q.toString(), { credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { location.href = "/dashboard/login?reason=expired"; return null; }
        return r.json().then(function (doc) { return { ok: r.ok, doc: doc }; });
      })
      .then(function (res) {
        if (!res) return;
        if (!res.ok) {
          $("result").hidden = true;
          show(res.doc.error ? res.doc.error.message : "request failed");
          return;
        }
        var doc = res.doc;
        $("result").hidden = false;
        $("title").textContent = doc.notification.title || doc.notification.id;
        $("meta").textContent = doc.notification.id + " · " + doc.status + " · app " + doc.app +
          (doc.notification.category ? " · " + doc.notification.category : "");
        counts(doc);
        recipients(doc);
        $("timeline-card").hidden = true;
        if (doc.timeline) timeline(doc.timeline);
      })
      .catch(function (err) { show("request failed: " + err); });
  }

  $("search").addEventListener("submit", function (ev) { ev.preventDefault(); search(); });
  var params = new URLSearchParams(location.search);
  ["id", "user", "app"].forEach(function (k) { if (params.get(k)) $(k === "id" ? "nid" : k).value = params.get(k); });
  if (params.get("id")) search();
}());
