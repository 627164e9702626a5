/*! tidings-inbox-view.js: the DOM of <tidings-inbox>: building it, drawing the
 * feed, the states and the preferences form. Apache-2.0.
 *
 * Mixed into the element's prototype by tidings-inbox.js, which holds the
 * behaviour (the client, loading, live events, keyboard). Nothing here writes
 * innerHTML: every title, body and name is data and goes in as text.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) {
    module.exports = factory(root, require("./tidings-inbox-ui.js"));
  } else {
    root.TidingsInboxView = factory(root, root.TidingsInboxUI);
  }
})(typeof window !== "undefined" ? window : this, function (root, UI) {
  "use strict";

  function el(tag, attrs, children) {
    var node = root.document.createElement(tag);
    for (var k in attrs || {}) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    (children || []).forEach(function (c) { if (c) node.append(c); });
    return node;
  }

  function text(s) { return root.document.createTextNode(s); }

  function icon(name) {
    var ns = "http://www.w3.org/2000/svg", svg = root.document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var path = root.document.createElementNS(ns, "path");
    path.setAttribute("d", UI.ICONS[name]);
    svg.append(path);
    return svg;
  }

  function fill(template, vars) {
    return String(template).replace(/\{(\w+)\}/g, function (m, k) { return k in vars ? vars[k] : m; });
  }

  function parseJSON(value, what) {
    if (!value) return null;
    try { return JSON.parse(value); }
    catch (e) { root.console.warn("tidings-inbox: the " + what + " attribute is not JSON", e); return null; }
  }

  // Only http(s) becomes a link: a notification's url is data, and a
  // "javascript:" href would run it.
  function safeUrl(url) {
    if (!url) return null;
    try {
      var u = new URL(url, root.document.baseURI);
      return u.protocol === "https:" || u.protocol === "http:" ? u.href : null;
    } catch (e) { return null; }
  }

  function isUnread(it) { return it.state === "unseen" || it.state === "seen"; }

  // -- Markdown bodies ("format": "markdown", docs/protocol.md#markdown-bodies) --------
  // The subset, written here because this file has no dependencies and no build
  // step: paragraphs, a line break at every newline, *em*, **strong**, `code`,
  // [links](url) and bullet or numbered lists. It builds nodes, text goes in as
  // text, so markup in a body stays characters on the screen; a link is made only
  // for an absolute http:, https: or mailto: URL, else it stays as written.
  var ITEM = /^ {0,3}(?:([-*+])|(\d{1,9})([.)]))[ \t]+(\S.*)$/;
  var PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
  var LINK_SCHEMES = ["http:", "https:", "mailto:"];
  // Bounds that keep a hostile body (8 KB of "[" or of nested "**") linear, or near it.
  var MAX_DEPTH = 8, MAX_LABEL = 500;

  function markdown(src) {
    var out = root.document.createDocumentFragment(), para = null, list = null, item = null;
    var gap = false;                                  // a blank line since the last item
    function flush() {
      if (para) out.append(el("p", {}, [inline(para.join("\n"))]));
      if (item) item.li.append(inline(item.lines.join("\n")));
      para = item = null;
    }
    String(src).replace(/\r\n?/g, "\n").split("\n").forEach(function (line) {
      var m = ITEM.exec(line);
      if (!line.trim()) { flush(); gap = true; return; }
      // a numbered list interrupts a paragraph only from 1 (CommonMark, as e-mail renders it)
      if (m && para && !list && m[2] !== undefined && Number(m[2]) !== 1) m = null;
      if (m) {
        var kind = m[1] || m[3];
        flush();
        if (!list || list.kind !== kind) {
          var start = m[2] !== undefined ? Number(m[2]) : 1;
          list = { kind: kind, node: el(m[1] ? "ul" : "ol", { start: start !== 1 ? String(start) : null }) };
          out.append(list.node);
        }
        item = { li: el("li"), lines: [m[4]] };
        list.node.append(item.li);
      } else if (item && !gap) {
        item.lines.push(line.trim());                 // a line of the item above
      } else {
        if (item) flush();
        list = null;
        (para = para || []).push(line.trim());
      }
      gap = false;
    });
    flush();
    return out;
  }

  // The run of n backticks at i closes where the next run of exactly n starts.
  function codeEnd(s, i, n) {
    var j = i + n;
    while ((j = s.indexOf("`", j)) >= 0) {
      var k = j;
      while (s[k] === "`") k++;
      if (k - j === n) return j;
      j = k;
    }
    return -1;
  }

  function runOf(s, i, ch) { var k = i; while (s[k] === ch) k++; return k - i; }

  // Where the delimiter d opened at i closes, skipping escapes and code spans;
  // -1 when nothing closes it. A closer follows a non-space; "_" not inside a word.
  // failed[d] is where a search for d found nothing: none after it can either.
  function closer(s, i, d, failed) {
    if (failed[d] !== undefined && failed[d] <= i) return -1;
    for (var j = i + d.length; j < s.length; j++) {
      var c = s[j];
      if (c === "\\") { j++; continue; }
      if (c === "`") {
        var n = runOf(s, j, "`"), e = codeEnd(s, j, n);
        j = e < 0 ? j + n - 1 : e + n - 1;
        continue;
      }
      if (c !== d[0]) continue;
      var n2 = runOf(s, j, c);
      if (n2 >= d.length && j > i + d.length && !/\s/.test(s[j - 1]) &&
          (c !== "_" || !/[\p{L}\p{N}]/u.test(s[j + n2] || ""))) {
        if (d.length === 1 && n2 === 2) { j++; continue; }   // a ** inside *...*
        return j + n2 - d.length;
      }
      j += n2 - 1;
    }
    failed[d] = i;
    return -1;
  }

  // [label](destination "title"): its parts, or null when it is not one; the
  // label ends before s's last "]" (lastClose).
  function linkAt(s, i, lastClose) {
    var depth = 0, j = i, stop = Math.min(lastClose + 1, i + MAX_LABEL);
    for (; j < stop; j++) {
      if (s[j] === "\\") { j++; continue; }
      if (s[j] === "[") depth++;
      else if (s[j] === "]" && --depth === 0) break;
    }
    var m = j < stop && /^\(\s*(?:<([^<>\n]*)>|((?:[^\s()\\]|\\.|\([^\s()]*\))+))(?:\s+("[^"]*"|'[^']*'))?\s*\)/
      .exec(s.slice(j + 1));
    if (!m) return null;
    var dest = unescape(m[1] !== undefined ? m[1] : m[2]), href = null;
    try {
      var u = new URL(dest);                        // no base: a relative link is not one
      if (LINK_SCHEMES.indexOf(u.protocol) >= 0) href = u.href;
    } catch (e) { /* not a URL: stays text */ }
    if (!href) return null;
    return { label: s.slice(i + 1, j), href: href, title: m[3] ? unescape(m[3].slice(1, -1)) : null,
             end: j + 1 + m[0].length };
  }

  function unescape(s) {
    return s.replace(/\\(.)/g, function (m, c) { return PUNCT.indexOf(c) >= 0 ? c : m; });
  }

  function inline(s, inLink, depth) {
    depth = depth || 0;
    var frag = root.document.createDocumentFragment(), buf = "", failed = {};
    var lastClose = s.lastIndexOf("]");
    function text() {
      buf.split("\n").forEach(function (part, k) {
        if (k) frag.append(el("br"));
        if (part) frag.append(root.document.createTextNode(part));
      });
      buf = "";
    }
    for (var i = 0; i < s.length;) {
      var c = s[i];
      if (c === "\\" && PUNCT.indexOf(s[i + 1]) >= 0) { buf += s[i + 1]; i += 2; continue; }
      if (c === "`") {
        var n = runOf(s, i, "`"), e = codeEnd(s, i, n);
        if (e < 0) { buf += s.slice(i, i + n); i += n; continue; }
        var code = s.slice(i + n, e).replace(/\n/g, " ");
        if (/^ .* $/.test(code) && code.trim()) code = code.slice(1, -1);
        text();
        frag.append(el("code", { text: code }));
        i = e + n;
        continue;
      }
      if (c === "[" && !inLink && depth < MAX_DEPTH) {
        var link = linkAt(s, i, lastClose);
        if (link) {
          text();
          var a = el("a", { href: link.href, rel: "noopener noreferrer", title: link.title });
          a.append(inline(link.label, true, depth + 1));
          frag.append(a);
          i = link.end;
          continue;
        }
      }
      if (c === "*" || c === "_") {
        var close = -1, d = s[i + 1] === c ? c + c : c;
        if (depth < MAX_DEPTH && !/\s/.test(s[i + d.length] || " ") &&
            (c === "*" || !/[\p{L}\p{N}]/u.test(s[i - 1] || ""))) {
          close = closer(s, i, d, failed);
          if (close < 0 && d.length === 2) { d = c; close = closer(s, i, d, failed); }
        }
        if (close >= 0) {
          text();
          var node = el(d.length === 2 ? "strong" : "em");
          node.append(inline(s.slice(i + d.length, close), inLink, depth + 1));
          frag.append(node);
          i = close + d.length;
        } else {                                      // the whole run opens nothing
          var run = runOf(s, i, c);
          buf += s.slice(i, i + run);
          i += run;
        }
        continue;
      }
      buf += c;
      i++;
    }
    text();
    return frag;
  }

  var ALL_CHANNELS = ["in_app", "webhook", "push", "email"];
  var DEFAULT_CHANNELS = ["in_app", "push", "email"];   // webhooks are the app's, not the user's

  function label(node, s) { node.setAttribute("aria-label", s); node.title = s; }

  // A constructed stylesheet, not a <style> element: pages with a strict
  // Content-Security-Policy (style-src 'self', like tidings' own) allow it.
  var sheet = null;
  function adoptStyles(shadow) {
    if (shadow.adoptedStyleSheets !== undefined && typeof root.CSSStyleSheet === "function") {
      if (!sheet) { sheet = new root.CSSStyleSheet(); sheet.replaceSync(UI.CSS); }
      shadow.adoptedStyleSheets = [sheet];
    } else {
      shadow.append(el("style", { text: UI.CSS }));
    }
  }

  var methods = {
    _build: function (shadow) {
      var self = this;
      adoptStyles(shadow);
      this.$badge = el("span", { class: "badge", part: "badge", "aria-hidden": "true", hidden: true });
      this.$bell = el("button", { type: "button", class: "bell", part: "bell", "aria-haspopup": "dialog",
                                  "aria-expanded": "false", "aria-controls": "panel" },
                      [icon("bell"), this.$badge]);
      this.$back = el("button", { type: "button", class: "icon", part: "back", "data-act": "back",
                                  hidden: true }, [icon("back")]);
      this.$title = el("h2", { id: "title", part: "title" });
      this.$markAll = el("button", { type: "button", class: "link", part: "mark-all",
                                     "data-act": "mark-all" });
      this.$prefsBtn = el("button", { type: "button", class: "icon", part: "preferences-button",
                                      "data-act": "prefs" }, [icon("gear")]);
      this.$close = el("button", { type: "button", class: "icon", part: "close", "data-act": "close" },
                       [icon("close")]);
      this.$tablist = el("div", { class: "tabs", part: "tabs", role: "tablist" });
      this.$note = el("p", { class: "note", part: "notice", role: "status" });
      this.$feed = el("ul", { class: "feed", part: "feed", role: "list" });
      this.$state = el("div", { class: "state", part: "state", hidden: true });
      this.$more = el("div", { class: "more", part: "more" });
      this.$scroller = el("div", { class: "scroller", part: "scroller", role: "tabpanel", id: "tabpanel" },
                          [this.$feed, this.$state, this.$more]);
      this.$form = el("form", { class: "form", part: "preferences", hidden: true });
      var head = el("div", { class: "head", part: "header" },
                    [this.$back, this.$title, this.$markAll, this.$prefsBtn, this.$close]);
      this.$panel = el("div", { class: "panel", part: "panel", id: "panel", role: "dialog",
                                "aria-modal": "true", "aria-labelledby": "title", hidden: true },
                       [head, this.$tablist, this.$note, this.$scroller, this.$form]);
      shadow.append(this.$bell, this.$panel);

      this.$bell.addEventListener("click", function () { self.toggle(); });
      this.$panel.addEventListener("click", function (e) { self._onClick(e); });
      shadow.addEventListener("keydown", function (e) { self._onKey(e); });
      this.$form.addEventListener("submit", function (e) { self._savePrefs(e); });
      this._onOutside = function (e) { if (e.composedPath().indexOf(self) < 0) self.open = false; };
      if (typeof root.IntersectionObserver === "function") {
        this._seenIO = new root.IntersectionObserver(function (entries) { self._onRowsSeen(entries); },
                                                     { root: this.$scroller, threshold: 0.5 });
        new root.IntersectionObserver(function () { self._checkMore(); },
                                      { root: this.$scroller, rootMargin: "0px 0px 200px 0px" })
          .observe(this.$more);
      }
    },

    // After a change of locale, strings or tabs: every row is drawn again.
    _renderAll: function () {
      this._rows = new Map();
      this._render();
      if (this._view === "prefs") this._renderForm();
    },

    _render: function () {
      if (!this._tabs.length) return;
      var S = this._s(), prefs = this._view === "prefs";
      this._renderBell();
      this.$title.textContent = prefs ? S.prefsTitle : S.title;
      this.$back.hidden = !prefs;
      label(this.$back, S.back);
      label(this.$prefsBtn, S.preferences);
      label(this.$close, S.close);
      this.$markAll.hidden = prefs;
      this.$markAll.textContent = S.markAllRead;
      this.$prefsBtn.hidden = prefs || this.hasAttribute("no-preferences");
      this.$tablist.hidden = prefs || this._tabs.length < 2;
      this.$tablist.setAttribute("aria-label", S.title);
      this.$scroller.hidden = prefs;
      this.$form.hidden = !prefs;
      this._renderTabs();
      this._renderFeed();
      this._renderState();
      this._renderNote();
      this._checkMore();
    },

    _renderBell: function () {
      var n = this._counts.unread || 0;
      this.$badge.hidden = n <= 0;
      this.$badge.textContent = n > 99 ? "99+" : String(n);
      this.$bell.setAttribute("aria-label", n > 0 ? this._plural("bellUnread", n) : this._s().bell);
      this.$markAll.disabled = n <= 0;
    },

    // Tab buttons are updated in place, so the one with focus keeps it.
    _renderTabs: function () {
      var self = this, S = this._s(), list = this.$tablist;
      while (list.children.length > this._tabs.length) list.lastElementChild.remove();
      this._tabs.forEach(function (tab, i) {
        var b = list.children[i] || list.appendChild(el("button", {
          type: "button", role: "tab", class: "tab", id: "tab-" + i, "aria-controls": "tabpanel",
          "data-tab": String(i) }));
        var selected = i === self._active;
        b.textContent = tab.def.label || S[tab.def.key] || "";
        b.setAttribute("aria-selected", String(selected));
        b.setAttribute("part", selected ? "tab tab-selected" : "tab");
        b.tabIndex = selected ? 0 : -1;
      });
      this.$scroller.setAttribute("aria-labelledby", "tab-" + this._active);
    },

    // Rows are keyed by id and reused while unchanged; only new, changed and
    // removed rows touch the DOM, so scrolling and focus survive live updates.
    _renderFeed: function () {
      var self = this, tab = this._tab(), feed = this.$feed, focus = this._focusKey();
      var menu = this._openMenuKey();
      // newest first by place: the id, or (back from a snooze) where it came back
      var items = Array.from(tab.items.values()).sort(function (a, b) { return a.key < b.key ? 1 : -1; });
      var rows = new Map();
      var wanted = items.map(function (it) {
        var sig = it.state + "|" + it.v, old = self._rows.get(it.id);
        var li = old && old.sig === sig ? old.li : self._row(it);
        rows.set(it.id, { sig: sig, li: li });
        return li;
      });
      this._rows = rows;
      var keep = new Set(wanted), cursor = feed.firstElementChild, next;
      wanted.forEach(function (li) {
        while (cursor && !keep.has(cursor)) { next = cursor.nextElementSibling; cursor.remove(); cursor = next; }
        if (li === cursor) cursor = cursor.nextElementSibling;
        else feed.insertBefore(li, cursor);
      });
      while (cursor) { next = cursor.nextElementSibling; cursor.remove(); cursor = next; }
      this._restoreFocus(focus);
      this._restoreMenu(menu);
    },

    // A row's Snooze menu stays open while its row is drawn again (it turned
    // seen or read here or on another device): the new row's menu opens on the
    // same item. It closes with a row that left the view.
    _openMenuKey: function () {
      var menu = this._menu, li = menu && menu.closest("li[data-id]");
      if (!li) return null;
      var items = Array.prototype.slice.call(menu.querySelectorAll("[role=menuitem]"));
      return { menu: menu, id: li.dataset.id, item: items.indexOf(this.shadowRoot.activeElement) };
    },

    _restoreMenu: function (k) {
      if (!k || k.menu.isConnected) return;
      this._menu = null;
      var row = this._rows.get(k.id), button = row && row.li.querySelector('[data-act="snooze-menu"]');
      if (!button) return;
      this._openMenu(button);
      var items = button.nextElementSibling.querySelectorAll("[role=menuitem]");
      if (k.item >= 0 && k.item < items.length) items[k.item].focus();
    },

    _row: function (it) {
      var S = this._s(), n = it.notification, unread = isUnread(it), href = safeUrl(n.url);
      var li = el("li", { class: "item " + it.state + (unread ? " unread" : "") + (it.arrived ? " arrived" : ""),
                          part: "item" + (unread ? " item-unread" : ""), "data-id": it.id });
      li.addEventListener("animationend", function () { li.classList.remove("arrived"); });
      it.arrived = false;                             // slide in once
      var main = el(href ? "a" : "button", { class: "main", part: "item-link", "data-act": "open",
                                             href: href, type: href ? null : "button" });
      if (unread) main.append(el("span", { class: "sr", text: S.unread + ": " }));
      main.append(el("span", { class: "title", part: "item-title", text: n.title || "" }));
      if (it.group && it.group.count > 1) {
        main.append(el("span", { class: "group", part: "item-group", text: this._groupText(it.group) }));
      }
      // A Markdown body's links cannot sit inside the row's own link or button:
      // the body follows it, and the row's link still covers the row (CSS).
      var md = n.format === "markdown" && n.body, box = main;
      if (md) box = el("div", { class: "content" }, [main]);
      if (md) box.append(el("div", { class: "body md", part: "item-body" }, [markdown(n.body)]));
      else if (n.body) main.append(el("span", { class: "body", part: "item-body", text: n.body }));
      var when = new Date(Date.parse(n.created_at));
      var meta = el("span", { class: "meta" }, [el("time", {
        part: "item-time", datetime: n.created_at, text: this._ago(n.created_at),
        title: isFinite(when) ? when.toLocaleString(this._locale()) : null })]);
      var back = it.state === "snoozed" && it.until ? new Date(Date.parse(it.until)) : null;
      if (back && isFinite(back)) {                   // a tab that shows snoozed rows
        meta.append(text(" · "), el("span", { part: "item-snoozed", text: fill(S.snoozedUntil, {
          time: back.toLocaleString(this._locale(), { dateStyle: "medium", timeStyle: "short" }) }) }));
      }
      box.append(meta);
      var actions = el("span", { class: "actions" });
      if (unread) actions.append(this._action("read", S.markRead, n.title, "check"));
      if (it.state === "snoozed") actions.append(this._action("unsnooze", S.unsnooze, n.title, "unsnooze"));
      else if (it.state !== "archived") {
        actions.append(this._action("archive", S.archive, n.title, "archive"));
        actions.append.apply(actions, this._snoozeMenu(it));
      }
      li.append(el("span", { class: "dot", part: "dot", "aria-hidden": "true" }), box, actions);
      if (this._seenIO && !this._shown.has(it.id)) this._seenIO.observe(li);
      return li;
    },

    _action: function (act, name, title, iconName) {
      return el("button", { type: "button", class: "icon", part: "action action-" + act, "data-act": act,
                            "aria-label": name + (title ? ": " + title : ""), title: name }, [icon(iconName)]);
    },

    // The Snooze button and its menu (closed): "1 hour", "Tomorrow, 9:00 AM" in
    // the user's language and time (tidings-inbox.js, _openMenu).
    _snoozeMenu: function (it) {
      var S = this._s(), title = it.notification.title, id = "snooze-" + it.id;
      var button = this._action("snooze-menu", S.snooze, title, "snooze");
      button.setAttribute("aria-haspopup", "menu");
      button.setAttribute("aria-expanded", "false");
      button.setAttribute("aria-controls", id);
      var at = this._snoozeUntil("tomorrow").toLocaleTimeString(this._locale(), { hour: "numeric",
                                                                                  minute: "2-digit" });
      var options = [["hour", S.snoozeHour], ["tomorrow", fill(S.snoozeTomorrow, { time: at })]];
      var menu = el("div", { class: "menu", part: "snooze-menu", role: "menu", id: id, hidden: true,
                             "aria-label": S.snooze + (title ? ": " + title : "") },
                    options.map(function (o) {
                      return el("button", { type: "button", role: "menuitem", tabindex: "-1",
                                            part: "snooze-option", "data-act": "snooze",
                                            "data-until": o[0], text: o[1] });
                    }));
      return [button, menu];
    },

    _focusKey: function () {
      var a = this.shadowRoot.activeElement, li = a && a.closest ? a.closest("li[data-id]") : null;
      if (!li) return null;
      return { node: a, id: li.dataset.id, act: a.dataset.act,
               index: Array.prototype.indexOf.call(this.$feed.children, li) };
    },

    // A row drawn again (its state moved) or gone (archived): focus goes to the
    // same control of its new row, else to the row now in its place.
    _restoreFocus: function (k) {
      if (!k || k.node.isConnected) return;
      var rows = this.$feed.children;
      var li = this.$feed.querySelector('li[data-id="' + k.id + '"]') ||
               rows[Math.min(k.index, rows.length - 1)];
      var target = li && (li.querySelector('[data-act="' + k.act + '"]') || li.querySelector(".main"));
      (target || this.$tablist.querySelector("[aria-selected=true]") || this.$close).focus();
    },

    _renderState: function () {
      var tab = this._tab(), S = this._s(), say = "", kind = "", retry = false;
      if (!tab.items.size && !(this._fatal && !tab.loaded)) {
        if (!tab.loaded && tab.error && !tab.busy) { say = S.error; kind = "error"; retry = true; }
        else if (!tab.loaded) { say = S.loading; kind = "loading"; }
        else {
          kind = "empty";
          say = tab.def.empty || (tab.def.state === "unread" ? S.emptyUnread
                                  : tab.def.state === "archived" ? S.emptyArchived : S.empty);
        }
      }
      var st = this.$state;
      st.hidden = !say;
      st.setAttribute("part", "state" + (kind ? " state-" + kind : ""));
      if (st.dataset.say !== say + retry) {
        st.dataset.say = say + retry;
        st.replaceChildren(el("p", { text: say }));
        if (retry) st.append(el("button", { type: "button", "data-act": "retry", text: S.retry }));
      }
      // busy while a page is on its way: not once its request failed, nor when
      // nothing will load (a stopped client)
      var waiting = !tab.loaded && !tab.error && !this._fatal;
      this.$feed.setAttribute("aria-busy", String(tab.busy || waiting || tab.more));
      var more = this.$more;
      more.hidden = !tab.loaded || !tab.next;
      more.replaceChildren();
      if (tab.more) more.append(el("span", { text: S.loadingMore }));
      else if (tab.moreError) {
        more.append(el("button", { type: "button", class: "link", "data-act": "retry-more", text: S.retry }));
      }
    },

    _renderNote: function () {
      var S = this._s(), say = "", kind = "";
      if (this._fatal) { say = this._fatal.code === 4401 ? S.expired : S.error; kind = "error"; }
      else if (this._flash) { say = this._flash; kind = "error"; }
      else if (this._offline || (root.navigator && root.navigator.onLine === false)) {
        say = S.offline;
        kind = "offline";
      }
      if (this.$note.textContent !== say) this.$note.textContent = say;
      this.$note.className = "note" + (kind ? " " + kind : "");
      this.$note.setAttribute("part", "notice" + (kind ? " notice-" + kind : ""));
    },

    // -- preferences ------------------------------------------------------------------
    _openPrefs: function () {
      var self = this;
      this._view = "prefs";
      this._prefs = null;
      this._prefsError = null;
      this._render();
      this._renderForm();
      this.$back.focus();
      if (!this._client) return;
      // The app's categories and digest defaults come with the preferences; a
      // server without them (or a failed read) leaves the panel as it was.
      var app = this._client.categories ? this._client.categories().catch(function () { return null; })
                                        : Promise.resolve(null);
      Promise.all([this._client.preferences(), app]).then(function (both) {
        self._appCategories = both[1] || { categories: [], digests: null };
        self._prefs = both[0] || {};
        self._renderForm();
      }, function (err) {
        self._prefsError = err;
        self._renderForm();
      });
    },

    // Categories: the `categories` attribute, else the app's (GET /v1/me/categories),
    // then those the user has preferences for, then those in the loaded feed. A
    // label: the attribute's, a `category_<id>` string set on the element, the
    // app's, the language's, the id.
    _categories: function (prefs) {
      var S = this._s(), own = this._strings, out = [], seen = new Set();
      var app = (this._appCategories && this._appCategories.categories) || [], byId = {};
      app.forEach(function (c) { if (c && typeof c.id === "string") byId[c.id] = c; });
      function add(id, name) {
        if (typeof id !== "string" || seen.has(id)) return;
        seen.add(id);
        var declared = byId[id] || {};
        out.push({ id: id, label: name || own["category_" + id] || declared.label || S["category_" + id] || id,
                   description: declared.description || "" });
      }
      var listed = parseJSON(this.getAttribute("categories"), "categories");
      (Array.isArray(listed) ? listed : app).forEach(function (c) {
        if (typeof c === "string") add(c);
        else if (c) add(c.id, Array.isArray(listed) ? c.label : null);
      });
      var mine = prefs.categories || {};
      Object.keys(mine).forEach(function (id) { if (id !== "*") add(id); });
      if (!out.length) {
        this._tabs.forEach(function (t) {
          t.items.forEach(function (it) { add(it.notification.category || "default"); });
        });
      }
      if (!out.length) add("default");
      if (mine["*"]) add("*");   // every other category, last
      return out;
    },

    // "App default" says what the app's default is for a category's batched
    // channels (its digest rules, PUT /v1/caps): each one, at most every N
    // minutes, once a day at a time, or per channel when they differ.
    _appDefault: function (category, batched) {
      var S = this._s(), app = this._appCategories && this._appCategories.digests;
      if (!app) return null;   // not known: the server did not say
      var rules = app[category] || {}, zone = (Intl.DateTimeFormat().resolvedOptions().timeZone) || "UTC";
      var says = batched.map(function (ch) {
        var r = rules[ch];
        if (!r || (!r.every && !r.daily)) return S.digestEach;
        if (r.every === 3600) return S.digestHourly;
        if (r.every) return fill(S.digestEvery, { minutes: Math.round(r.every / 60) });
        var tz = r.tz || "UTC";
        return fill(S.digestDailyAt, { time: r.daily + (tz === zone ? "" : " " + tz) });
      });
      var rule = says.every(function (x) { return x === says[0]; }) ? says[0] : S.digestPerChannel;
      return fill(S.digestDefaultIs, { rule: rule.charAt(0).toLocaleLowerCase(this._locale()) + rule.slice(1) });
    },

    _channels: function () {
      var listed = parseJSON(this.getAttribute("channels"), "channels");
      var ok = (Array.isArray(listed) ? listed : []).filter(function (c) {
        return ALL_CHANNELS.indexOf(c) >= 0;
      });
      return ok.length ? ok : DEFAULT_CHANNELS;
    },

    _renderForm: function () {
      var S = this._s(), f = this.$form, prefs = this._prefs;
      if (!prefs) {
        f.replaceChildren(el("p", { class: "state", part: "state", text: this._prefsError ? S.error : S.loading }));
        return;
      }
      var chans = this._channels();
      var head = el("tr", {}, [el("th", { scope: "col", text: S.category })].concat(chans.map(function (c) {
        return el("th", { scope: "col", text: S["channel_" + c] || c });
      })));
      // Digests batch the channels that interrupt (push, e-mail; webhook when shown).
      var batched = chans.filter(function (c) { return c !== "in_app"; });
      var dailyAt = "09:00", self = this;
      this._ids = this._ids || 0;
      var body = this._categories(prefs).map(function (cat) {
        var named = (prefs.categories || {})[cat.id];
        // "*" is every other category (an unsubscribe link for all of them
        // writes it): it switches outbound channels, and has no digest rules.
        // A category the preferences do not name follows it, and shows so.
        var every = cat.id === "*";
        var star = (!every && !named && (prefs.categories || {})["*"]) || {};
        var mine = named || {};
        var head = el("th", { scope: "row" }, [text(cat.label), cat.description
          ? el("span", { class: "desc", part: "category-description", text: cat.description }) : null]);
        var cells = [head].concat(chans.map(function (ch) {
          if (every && ch === "in_app") return el("td", {});
          var on = ch in mine ? mine[ch] !== false : (ch === "in_app" || star[ch] !== false);
          return el("td", {}, [el("input", {
            type: "checkbox", "data-cat": cat.id, "data-ch": ch, checked: on, "data-was": String(on),
            "aria-label": cat.label + ": " + (S["channel_" + ch] || ch) })]);
        }));
        if (batched.length && every) cells.push(el("td", {}));
        else if (batched.length) {
          var rules = (prefs.digests || {})[cat.id] || {};
          var values = batched.map(function (ch) {
            var r = rules[ch];
            if (r && r.daily) dailyAt = r.daily;
            return !r ? "" : r.every ? "every:" + r.every : r.daily ? "daily" : "each";
          });
          // Channels with different rules (set through the API) stay as they are.
          var value = values.every(function (v) { return v === values[0]; }) ? values[0] : "mixed";
          var options = [["", S.digestDefault], ["each", S.digestEach], ["every:3600", S.digestHourly],
                         ["daily", S.digestDaily]];
          if (/^every:/.test(value) && value !== "every:3600") {
            options.splice(2, 0, [value, fill(S.digestEvery, { minutes: Math.round(Number(value.slice(6)) / 60) })]);
          }
          if (value === "mixed") options.unshift(["mixed", S.digestMixed]);
          // what "App default" is, under the choice (and read with it)
          var said = self._appDefault(cat.id, batched), id = "default-" + (++self._ids);
          cells.push(el("td", { class: "digest" }, [el("select", {
            "data-digest": cat.id, "data-was": value, "aria-label": cat.label + ": " + S.digest,
            "aria-describedby": said ? id : null }, options.map(function (o) {
            return el("option", { value: o[0], selected: o[0] === value, text: o[1] });
          })), said ? el("span", { class: "default", id: id, part: "digest-default", text: said }) : null]));
        }
        return el("tr", {}, cells);
      });
      if (batched.length) head.append(el("th", { scope: "col", text: S.digest }));
      var q = prefs.quiet_hours;
      var zone = (Intl.DateTimeFormat().resolvedOptions().timeZone) || "UTC";
      var on = el("input", { type: "checkbox", name: "quiet", checked: !!q });
      var fields = [
        el("input", { type: "time", name: "start", value: q ? q.start : "22:00", required: true }),
        el("input", { type: "time", name: "end", value: q ? q.end : "07:00", required: true }),
        el("input", { type: "text", name: "tz", value: q ? q.tz : zone, list: "zones", autocomplete: "off",
                      spellcheck: "false" }),
      ];
      function sync() { fields.forEach(function (x) { x.disabled = !on.checked; }); }
      on.addEventListener("change", sync);
      sync();
      if (!this._zones && typeof Intl.supportedValuesOf === "function") {
        this._zones = el("datalist", { id: "zones" }, Intl.supportedValuesOf("timeZone").map(function (z) {
          return el("option", { value: z });
        }));
      }
      this.$saved = el("span", { class: "saved", role: "status" });
      f.replaceChildren(
        el("table", { part: "preferences-table" }, [el("thead", {}, [head]), el("tbody", {}, body)]),
        batched.length ? el("p", { class: "row", part: "digest-time" }, [el("label", {}, [
          text(S.digestAt), el("input", { type: "time", name: "digestAt", value: dailyAt, required: true })])]) : null,
        batched.length ? el("p", { class: "hint", text: S.digestHint }) : null,
        el("fieldset", { part: "quiet-hours" }, [
          el("legend", { text: S.quietHours }),
          el("label", {}, [on, text(S.quietOn)]),
          el("div", { class: "row" }, [
            el("label", {}, [text(S.quietFrom), fields[0]]),
            el("label", {}, [text(S.quietTo), fields[1]]),
            el("label", {}, [text(S.timeZone), fields[2]]),
          ]),
          el("p", { class: "hint", text: S.quietHint }),
          this._zones || null,
        ]),
        el("div", { class: "buttons" }, [el("button", { type: "submit", part: "save", text: S.save }), this.$saved]));
    },

    _savePrefs: function (e) {
      e.preventDefault();
      if (!this._prefs || !this._client) return;
      // Only what the user changed here goes back, as a patch (PATCH
      // /v1/me/preferences): a switch flipped, the quiet hours if they differ,
      // a digest choice made. What the panel did not change -- other
      // categories and channels, and whatever another device or an unsubscribe
      // link changed while it was open -- stays as the server has it.
      var self = this, S = this._s(), f = this.$form, patch = {};
      f.querySelectorAll("input[data-cat]").forEach(function (box) {
        if (String(box.checked) === box.dataset.was) return;   // untouched
        patch.categories = patch.categories || {};
        var cat = patch.categories[box.dataset.cat] = patch.categories[box.dataset.cat] || {};
        cat[box.dataset.ch] = box.checked;
      });
      var el2 = f.elements;
      var quiet = el2.quiet.checked
        ? { start: el2.start.value, end: el2.end.value, tz: el2.tz.value.trim() || "UTC" } : null;
      if (JSON.stringify(quiet) !== JSON.stringify(this._prefs.quiet_hours || null)) patch.quiet_hours = quiet;
      // Digests: a shown category's batched channels follow its select when
      // it was changed (or is "once a day", whose time may have been).
      var zone = (Intl.DateTimeFormat().resolvedOptions().timeZone) || "UTC";
      var batched = this._channels().filter(function (c) { return c !== "in_app"; });
      var had = this._prefs.digests || {};
      f.querySelectorAll("select[data-digest]").forEach(function (sel) {
        var v = sel.value;
        if (v === "mixed" || (v === sel.dataset.was && v !== "daily")) return;   // untouched
        var was = had[sel.dataset.digest] || {}, rules = {};
        batched.forEach(function (ch) {
          if (v === "") rules[ch] = null;
          else if (v === "each") rules[ch] = {};
          else if (v === "daily") {
            rules[ch] = { daily: el2.digestAt.value || "09:00", tz: (was[ch] && was[ch].tz) || zone };
          }
          else rules[ch] = { every: Number(v.slice(6)) };
        });
        patch.digests = patch.digests || {};
        patch.digests[sel.dataset.digest] = rules;
      });
      var button = f.querySelector("button[type=submit]");
      button.disabled = true;
      this.$saved.textContent = S.saving;
      this._client.updatePreferences(patch).then(function (saved) {
        if (saved) self._prefs = saved;
        f.querySelectorAll("input[data-cat]").forEach(function (box) {
          box.dataset.was = String(box.checked);   // what is saved now
        });
        f.querySelectorAll("select[data-digest]").forEach(function (sel) {
          if (sel.value !== "mixed") sel.dataset.was = sel.value;
        });
        self.$saved.textContent = S.saved;
      }, function (err) {
        self.$saved.textContent = fill(S.actionFailed, { message: err.message || String(err) });
      }).then(function () { button.disabled = false; });
    },
  };

  return { el: el, fill: fill, parseJSON: parseJSON, isUnread: isUnread, markdown: markdown,
           methods: methods };
});
