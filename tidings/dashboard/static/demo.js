// The demo inbox: a bell with the unread badge, the list, mark read / mark
// all read, live arrival. Everything goes through tidings.js; copy from here.
(function () {
  "use strict";

  var params = new URLSearchParams(location.search);
  var token = params.get("token");
  var $ = function (id) { return document.getElementById(id); };
  var list = $("list"), badge = $("badge"), statusEl = $("status"), banner = $("banner");

  if (!token) {
    showBanner("Open this page as /demo?token=<user token> (tidings token --app APP --user USER).");
    setStatus("stopped", "No token");
    return;
  }

  // id -> {id, state, notification}; rendered newest first (ids are time-ordered).
  var items = new Map();
  var nextBefore = null;

  var client = Tidings.connect({
    token: token,                                    // a real app passes getToken instead
    transport: params.get("transport") || "auto",    // "auto" | "websocket" | "sse"
  });
  window.tidingsClient = client;                     // handy in the console

  // -- what the stream and the API tell us ------------------------------------
  client.on("inbox", function (page) {
    // A fresh first page (first load, recovered:false, or after a reconnect).
    // Keep what arrived live while it was loading: newer than its newest item.
    var newest = page.items.length ? page.items[0].id : "";
    var old = items;
    items = new Map();
    page.items.forEach(put);
    old.forEach(function (it, id) { if (id > newest) put(it); });
    nextBefore = page.next_before;
    render();
  });

  client.on("notification", function (n, ev) {
    if (items.has(n.id)) return;
    // With ev.group, this updates a group entry ("user_17 and 41 others liked
    // your post"): it replaces the row of the same group.id, unread again.
    put({ id: n.id, state: "unseen", notification: n, group: ev.group, arrived: true });
    render();
  });

  client.on("updated", function (n, ev) {
    if (ev.group) {
      // A group entry lost a member (retracted): the row of the same group.id
      // shows n now, with this summary and state.
      var had = false;
      items.forEach(function (other, id) {
        if (other.group && other.group.id === ev.group.id) { items.delete(id); had = true; }
      });
      if (had) items.set(n.id, { id: n.id, state: ev.state, notification: n, group: ev.group });
      return render();
    }
    var it = items.get(n.id);
    if (it) { it.notification = n; render(); }
  });

  client.on("deleted", function (id) {
    if (items.delete(id)) render();
  });

  client.on("state", function (change) {       // from any device of this user, this one too
    change.ids.forEach(function (id) { applyState(id, change.state); });
    render();
  });

  client.on("counts", function (c) { setBadge(c.unread); });

  client.on("status", function (s) {
    if (s.state === "live") setStatus("live", "Live · " + (s.transport === "sse" ? "SSE" : "WebSocket"));
    else if (s.state === "reconnecting") setStatus("reconnecting", "Reconnecting…");
    else if (s.state === "connecting") setStatus("connecting", "Connecting…");
    if (s.transport) statusEl.dataset.transport = s.transport;
  });

  client.on("fatal", function (f) {
    setStatus("stopped", "Stopped");
    showBanner(f.code === 4401 ? "This token is not valid (or expired). Get a new one."
                               : "The stream stopped: " + (f.reason || f.code) + ".");
  });

  client.on("error", function (err) { showBanner("Could not load the inbox: " + err.message); });

  // -- what the user does --------------------------------------------------------
  $("bell").addEventListener("click", function () {
    var panel = $("panel"), open = panel.hidden;
    panel.hidden = !open;
    this.setAttribute("aria-expanded", String(open));
  });

  $("mark-all").addEventListener("click", function () {
    client.markAllRead().then(function () {
      items.forEach(function (it) { applyState(it.id, "read"); });
      render();
    }, showError);
  });

  // A click on an item opens its url (if it has one) and marks it read.
  list.addEventListener("click", function (e) {
    var li = e.target.closest("li[data-id]");
    if (!li) return;
    if (li.dataset.url && !e.target.closest("a, button")) {
      window.open(li.dataset.url, "_blank", "noopener,noreferrer");
    }
    if (!li.classList.contains("unread")) return;
    var id = li.dataset.id;
    client.markRead([id]).then(function () { applyState(id, "read"); render(); }, showError);
  });

  $("more").addEventListener("click", function () {
    client.inbox({ limit: 20, before: nextBefore }).then(function (page) {
      page.items.forEach(function (it) { if (!items.has(it.id)) items.set(it.id, it); });
      nextBefore = page.next_before;
      render();
    }, showError);
  });

  // -- drawing -------------------------------------------------------------------
  var ORDER = { unseen: 0, seen: 1, read: 2, archived: 3 };   // states only move forward

  // One row per group entry: a newer member replaces the row of its group.id.
  function put(it) {
    if (it.group) {
      var gid = it.group.id, stale = null;
      items.forEach(function (other, id) { if (other.group && other.group.id === gid) stale = id; });
      if (stale !== null && stale > it.id) return;   // the row already shows a newer member
      if (stale !== null) items.delete(stale);
    }
    items.set(it.id, it);
  }

  function applyState(id, state) {
    var it = items.get(id);
    if (!it) return;
    if (state === "archived") items.delete(id);
    else if (ORDER[state] > ORDER[it.state]) it.state = state;
  }

  function render() {
    var sorted = Array.from(items.values()).sort(function (a, b) { return a.id < b.id ? 1 : -1; });
    list.replaceChildren.apply(list, sorted.map(row));
    $("empty").hidden = sorted.length > 0;
    $("more").hidden = !nextBefore;
    $("mark-all").disabled = !sorted.some(isUnread);
  }

  function isUnread(it) { return it.state === "unseen" || it.state === "seen"; }

  function row(it) {
    var n = it.notification, li = document.createElement("li");
    li.dataset.id = it.id;
    li.className = "item" + (isUnread(it) ? " unread" : "") + (it.arrived ? " arrived" : "");
    it.arrived = false;                                  // animate once
    var dot = el("span", "dot");
    var text = el("div", "text");
    var title = el("p", "title"), url = link(n.url);
    if (url) {
      var a = el("a", "", n.title || url);
      a.href = url; a.target = "_blank"; a.rel = "noopener noreferrer";
      title.append(a);
      li.dataset.url = url;
    } else {
      title.textContent = n.title || "(no title)";
    }
    text.append(title);
    if (it.group && it.group.count > 1) text.append(el("p", "group", groupText(it.group)));
    if (n.body) text.append(el("p", "body", n.body));
    var meta = el("p", "meta");
    meta.append(el("span", "cat", n.category || "default"));
    var time = el("time", "", ago(n.created_at));
    time.dateTime = n.created_at;
    meta.append(time);
    text.append(meta);
    li.append(dot, text);
    if (isUnread(it)) {
      var btn = el("button", "mark-read", "Mark read");
      btn.type = "button";
      li.append(btn);
    }
    return li;
  }

  // Only web addresses open: http(s) or a path on this site (the server
  // refuses other schemes, and a page should not trust that alone).
  function link(url) {
    return typeof url === "string" && /^(https?:\/\/|\/(?!\/))/i.test(url) ? url : "";
  }

  function groupText(g) {         // "user_17, user_9 and 40 others · 42 notifications"
    var names = g.actors || [], others = (g.actor_count || names.length) - names.length;
    var who = names.join(", ") + (others > 0 ? " and " + others + (others > 1 ? " others" : " other") : "");
    return (who ? who + " · " : "") + g.count + " notifications";
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;   // never innerHTML: titles are data
    return node;
  }

  function setBadge(unread) {
    badge.hidden = !unread;
    badge.textContent = unread > 99 ? "99+" : String(unread);
    badge.dataset.count = String(unread);
    document.title = (unread ? "(" + unread + ") " : "") + "Inbox demo · tidings";
  }

  function setStatus(state, text) {
    statusEl.dataset.state = state;
    statusEl.textContent = text;
  }

  function showBanner(text) { banner.textContent = text; banner.hidden = false; }
  function showError(err) { showBanner(err.message || String(err)); }

  function ago(iso) {
    var s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (!isFinite(s)) return "";
    if (s < 45) return "just now";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return new Date(iso).toLocaleDateString();
  }
  setInterval(render, 30000);                          // keep "3 min ago" true
})();
