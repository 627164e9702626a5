/*! tidings-inbox.js: <tidings-inbox>, a drop-in notification inbox built on
 * tidings.js. A Web Component: no dependencies, no build step. Apache-2.0.
 *
 *   <script src="https://notify.example.com/tidings-inbox.js"></script>
 *   <tidings-inbox url="https://notify.example.com"></tidings-inbox>
 *   <script>
 *     document.querySelector("tidings-inbox").getToken =
 *       () => fetch("/my-backend/tidings-token").then((r) => r.text());   // or token="…"
 *   </script>
 *
 * GET /tidings-inbox.js serves tidings.js, tidings-inbox-ui.js (strings, styles)
 * and this file as one script. Attributes, properties, events, ::part names and
 * custom properties: docs/inbox.md.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) {
    module.exports = factory(root, require("./tidings.js"), require("./tidings-inbox-ui.js"),
                             require("./tidings-inbox-view.js"));
  } else {
    factory(root, root.Tidings, root.TidingsInboxUI, root.TidingsInboxView);
  }
})(typeof window !== "undefined" ? window : this, function (root, Tidings, UI, View) {
  "use strict";
  // Imported where there is no DOM (server-side rendering): define nothing.
  if (!root || !root.customElements || typeof root.HTMLElement !== "function") return null;
  var defined = root.customElements.get("tidings-inbox");
  if (defined) return defined;

  var fill = View.fill, parseJSON = View.parseJSON, isUnread = View.isUnread;
  // States only move forward; a snoozed entry stays snoozed (read and archive
  // leave it alone) until it comes back as a "notification" event, resurfaced.
  var ORDER = { unseen: 0, seen: 1, read: 2, archived: 3, snoozed: 4 };
  var DEFAULT_TABS = [{ key: "tabAll" }, { key: "tabUnread", state: "unread" },
                      { key: "tabArchived", state: "archived" }];
  var OFFLINE_AFTER_MS = 1500;   // a reconnect quicker than this shows nothing
  var PENDING_MAX = 100;         // live arrivals kept for a tab that has not loaded yet
  var SEEN_FLUSH_MS = 300;       // rows that came into view, marked seen together

  function stateMatches(want, state) {
    // the inbox's default: all but archived and snoozed
    if (!want) return state !== "archived" && state !== "snoozed";
    if (want === "all") return true;
    if (want === "unread") return isUnread({ state: state });
    return state === want;
  }

  function filtered(def) { return def.category !== undefined || def.tags !== undefined; }

  // A tab is {label, state?, category?, tags?}, which the server filters its pages
  // by; live items and state changes are matched here, by the same rules.
  function matches(def, it) {
    if (!stateMatches(def.state, it.state)) return false;
    var n = it.notification;
    if (def.category !== undefined && [].concat(def.category).indexOf(n.category || "default") < 0) {
      return false;
    }
    if (def.tags !== undefined) {
      var tags = n.tags || [];
      return [].concat(def.tags).some(function (t) { return tags.indexOf(t) >= 0; });
    }
    return true;
  }

  function toItem(raw) {
    return { id: raw.id, key: raw.id, state: raw.state, notification: raw.notification,
             group: raw.group || null, until: raw.snoozed_until || null, v: 0 };
  }

  // A page's items with their places (`key`, what rows sort by, newest first).
  // The server sorts an entry back from a snooze by when it came back, not by
  // its id, and does not say so: an item above a larger id is placed just above
  // the one under it ("~" sorts after every id character); the last item's place
  // is the page's next_before.
  function placed(res) {
    var items = res.items.map(toItem), below = null;
    for (var i = items.length - 1; i >= 0; i--) {
      var it = items[i];
      if (i === items.length - 1 && res.next_before) it.key = res.next_before;
      else if (below !== null && it.id <= below) it.key = below + "~";
      below = it.key;
    }
    return items;
  }

  // Above every row of the tab: where an entry back from a snooze goes. A newer
  // notification's id is larger still (ids are time-ordered, of one length).
  function topKey(tab, id) {
    var top = id;
    tab.items.forEach(function (o) { if (o.key >= top) top = o.key + "~"; });
    return top;
  }

  // One row per group entry: a newer member replaces the row of its group.id.
  function put(tab, it) {
    if (it.group) {
      var stale = null;
      tab.items.forEach(function (o, id) { if (o.group && o.group.id === it.group.id) stale = id; });
      if (stale !== null && tab.items.get(stale).key > it.key) return;
      if (stale !== null) tab.items.delete(stale);
    }
    tab.items.set(it.id, it);
  }

  // A group entry changed without a new member (one was retracted): the row of
  // its group.id shows n now, with this summary and state. A tab that has no such
  // row takes it only where its loaded pages reach (older rows come with "more").
  function regroup(tab, n, g, state) {
    var old = null;
    tab.items.forEach(function (o) { if (o.group && o.group.id === g.id) old = o; });
    var it = { id: n.id, key: old && old.key > old.id ? old.key : n.id,   // a resurfaced row stays up
               state: state || (old ? old.state : "unseen"), notification: n, group: g,
               arrived: false, v: old ? old.v + 1 : 0 };
    if (old) tab.items.delete(old.id);
    if (!matches(tab.def, it)) return;
    if (old || (tab.loaded && (!tab.next || it.key > tab.next))) tab.items.set(it.id, it);
  }

  function newTab(def) {
    return { def: def, items: new Map(), next: null, loaded: false, stale: false, busy: false,
             error: null, more: false, moreError: null, gen: 0, pending: [] };
  }

  class TidingsInbox extends root.HTMLElement {
    static get observedAttributes() {
      return ["url", "token", "transport", "page-size", "tabs", "locale", "categories", "channels",
              "open"];
    }

    constructor() {
      super();
      this._getToken = null;
      this._strings = {};
      this._client = null;
      this._tabs = [];
      this._active = 0;
      this._view = "feed";            // "feed" | "prefs"
      this._prefs = null;
      this._prefsError = null;
      this._counts = { unread: 0, unseen: 0 };
      this._offline = false;
      this._offlineTimer = null;
      this._fatal = null;
      this._flash = "";
      this._rows = new Map();         // id -> {sig, li}: rows reused while unchanged
      this._seenQueue = new Set();
      this._shown = new Set();        // ids reported displayed by this element
      this._build(this.attachShadow({ mode: "open" }));
    }

    // -- public surface ------------------------------------------------------------
    /** A function returning (a promise of) a user token; called before every connect. */
    get getToken() { return this._getToken; }
    set getToken(fn) {
      this._getToken = typeof fn === "function" ? fn : null;
      if (this._fatal) this._stop();   // a client stopped by a refused token starts again
      this._startSoon();
    }

    /** Strings over the locale's (see tidings-inbox-ui.js for the keys). */
    get strings() { return this._strings; }
    set strings(obj) { this._strings = obj || {}; this._cachedStrings = null; this._renderAll(); }

    get open() { return this.hasAttribute("open"); }
    set open(v) { this.toggleAttribute("open", !!v); }
    toggle(force) { this.open = force === undefined ? !this.open : !!force; }

    /** The tidings.js client (null until a token source is set). */
    get client() { return this._client; }

    connectedCallback() {
      var self = this;
      // a property set before the element was defined shadows the accessor: re-set it
      ["getToken", "strings", "open"].forEach(function (p) {
        if (Object.prototype.hasOwnProperty.call(self, p)) {
          var v = self[p];
          delete self[p];
          self[p] = v;
        }
      });
      if (!this._tabs.length) this._setTabs();
      this._onNet = this._onNet || function () { self._renderNote(); };
      root.addEventListener("online", this._onNet);
      root.addEventListener("offline", this._onNet);
      this._tick = setInterval(function () { self._updateTimes(); }, 30000);
      this._renderAll();
      this._startSoon();   // after a framework had a chance to set getToken
    }

    disconnectedCallback() {
      this._stop();
      clearInterval(this._tick);
      root.removeEventListener("online", this._onNet);
      root.removeEventListener("offline", this._onNet);
      document.removeEventListener("pointerdown", this._onOutside, true);
    }

    attributeChangedCallback(name, old, value) {
      if (old === value) return;
      if (name === "open") return this._syncOpen();
      if (name === "url" || name === "transport" || name === "page-size") {
        if (this._client) { this._stop(); this._startSoon(); }
        return;
      }
      if (name === "token") {           // the next connect reads it; a stopped client restarts
        if (this._fatal) this._stop();
        return this._startSoon();
      }
      if (name === "tabs") this._setTabs();
      if (name === "locale") {
        this._cachedStrings = null;
        // the server's text too: the pages and labels read from now on (the live
        // stream keeps the language it opened with until it reconnects)
        var locale = this.getAttribute("locale") || null;
        if (this._client && this._client.locale !== locale) {
          this._client.locale = locale;
          this._setTabs();
        }
      }
      this._renderAll();
    }

    // -- the client -------------------------------------------------------------------
    _startSoon() {
      var self = this;
      Promise.resolve().then(function () { self._start(); });
    }

    _token() {
      return this._getToken ? this._getToken() : this.getAttribute("token");
    }

    _start() {
      if (this._client || !this.isConnected) return;
      if (!this._getToken && !this.getAttribute("token")) return;   // waiting for one
      if (!Tidings) throw new Error("tidings-inbox: load tidings.js first (or /tidings-inbox.js)");
      if (!this._tabs.length) this._setTabs();
      var self = this;
      var c = this._client = Tidings.connect({
        url: this.getAttribute("url") || undefined,
        getToken: function () { return self._token(); },
        transport: this.getAttribute("transport") || "auto",
        pageSize: this._pageSize(),
        // only the attribute, not <html lang>: without it the user's preferences choose
        locale: this.getAttribute("locale") || undefined,
      });
      function on(type, fn) { c.on(type, function () { if (self._client === c) fn.apply(self, arguments); }); }
      on("inbox", this._onInbox);
      on("notification", this._onNotification);
      on("state", this._onState);
      on("updated", this._onUpdated);
      on("deleted", this._onDeleted);
      on("counts", this._onCounts);
      on("status", this._onStatus);
      on("fatal", this._onFatal);
      on("error", this._onLoadError);
      this._renderAll();
    }

    _stop() {
      var c = this._client;
      this._client = null;
      if (c) c.close();
      this._tabs = this._tabs.map(function (t) { return newTab(t.def); });
      this._counts = { unread: 0, unseen: 0 };
      this._fatal = null;
      this._offline = false;
      clearTimeout(this._offlineTimer);
      this._offlineTimer = null;
    }

    _pageSize() {
      var n = parseInt(this.getAttribute("page-size"), 10);
      return n >= 1 ? Math.min(n, 100) : 20;
    }

    _setTabs() {
      var defs = parseJSON(this.getAttribute("tabs"), "tabs");
      if (!Array.isArray(defs) || !defs.length) defs = DEFAULT_TABS;
      this._tabs = defs.map(function (d) { return newTab(d || {}); });
      this._active = Math.min(this._active, this._tabs.length - 1);
      if (this._client) this._loadFirst(this._tab());
    }

    _tab() { return this._tabs[this._active]; }

    // -- loading pages -------------------------------------------------------------
    // One server page of the tab: its state, category and tags are the inbox API's
    // filters, so the page is full however rare they are.
    _fetch(tab, before) {
      var def = tab.def;
      return this._client.inbox({ limit: this._pageSize(), before: before || undefined, state: def.state,
                                  category: def.category, tags: def.tags });
    }

    // The first page of a tab; with `page`, that page is already here (the client's).
    _loadFirst(tab, page) {
      if (!this._client) return;
      var self = this, gen = ++tab.gen;
      tab.busy = true;
      tab.error = null;
      tab.stale = false;
      tab.pending = [];
      tab.more = false;        // a "more" still in flight is dropped (its gen is old)
      tab.moreError = null;
      this._render();
      (page ? Promise.resolve(page) : this._fetch(tab, null)).then(function (res) {
        if (gen !== tab.gen) return;                 // a newer load won
        var live = tab.pending;
        tab.items = new Map();
        placed(res).forEach(function (it) { if (matches(tab.def, it)) put(tab, it); });
        live.forEach(function (it) { if (!tab.items.has(it.id)) put(tab, it); });   // arrived meanwhile
        tab.next = res.next_before;
        tab.loaded = true;
        tab.busy = false;
        tab.pending = [];
        self._render();
      }, function (err) {
        if (gen !== tab.gen) return;
        tab.busy = false;
        tab.error = err;
        self._render();
      });
    }

    _loadMore() {
      var tab = this._tab(), self = this, gen = tab.gen;
      if (!this._client || !tab.loaded || !tab.next || tab.more || tab.busy) return;
      tab.more = true;
      tab.moreError = null;
      this._render();
      this._fetch(tab, tab.next).then(function (res) {
        if (gen !== tab.gen) return;
        placed(res).forEach(function (it) {
          if (!tab.items.has(it.id) && matches(tab.def, it)) put(tab, it);
        });
        tab.next = res.next_before;
        tab.more = false;
        self._render();
      }, function (err) {
        if (gen !== tab.gen) return;
        tab.more = false;
        tab.moreError = err;
        self._render();
      });
    }

    _checkMore() {
      var tab = this._tab();
      if (!this.open || this._view !== "feed" || !tab.loaded || !tab.next || tab.more ||
          tab.moreError || tab.busy) return;
      var r = this.$more.getBoundingClientRect(), box = this.$scroller.getBoundingClientRect();
      if (r.top < box.bottom + 200) this._loadMore();
    }

    // -- what the client tells us ---------------------------------------------------
    _onInbox(page) {
      // A fresh first page (first hello, recovered:false, a reconnect): read state,
      // edits and deletions may have moved, so every tab reloads when next shown.
      var active = this._tab();
      this._tabs.forEach(function (t) { if (t !== active) t.stale = true; });
      var plain = !active.def.state && !filtered(active.def);
      this._loadFirst(active, plain ? page : null);
    }

    _onLoadError(err) {
      this._tabs.forEach(function (t) { if (!t.loaded && !t.busy) t.error = err; });
      this._render();
    }

    // A new notification, or (resurfaced) an entry back from a snooze: the same
    // id again, now first and unread, wherever its row was (or had gone).
    _onNotification(n, ev) {
      this._tabs.forEach(function (tab) {
        var it = { id: n.id, key: ev.resurfaced ? topKey(tab, n.id) : n.id, state: "unseen",
                   notification: n, group: ev.group || null, until: null, arrived: true, v: 0 };
        if (ev.resurfaced) tab.items.delete(n.id);   // its place is new (a Snoozed tab: gone)
        if (!matches(tab.def, it)) return;
        if (tab.loaded) put(tab, it);
        if (!tab.loaded || tab.busy) {
          tab.pending.push(it);
          if (tab.pending.length > PENDING_MAX) tab.pending.shift();
        }
      });
      this._render();
    }

    // "snoozed" (here or on another device): out of the default view until it
    // comes back; the counts follow in their own event.
    _onState(change) { this._applyState(change.ids, change.state, change.until); }

    _applyState(ids, state, until) {
      var tabs = this._tabs, moved = new Map();
      tabs.forEach(function (tab) {
        ids.forEach(function (id) {
          var it = tab.items.get(id);
          if (!it) return;
          if (ORDER[state] > ORDER[it.state]) { it.state = state; it.v += 1; }
          if (state === "snoozed" && until && it.until !== until) { it.until = until; it.v += 1; }
          if (!matches(tab.def, it)) tab.items.delete(id);
          moved.set(id, it);
        });
      });
      // into the tabs it belongs to now (archived: the Archived tab)
      moved.forEach(function (it) {
        tabs.forEach(function (tab) {
          if (tab.loaded && !tab.items.has(it.id) && matches(tab.def, it)) {
            put(tab, Object.assign({}, it, { arrived: false }));
          }
        });
      });
      this._render();
    }

    // Unsnoozed here: the entry is back as the server put it, first and unseen,
    // as its "notification" event (resurfaced) will say again to every device;
    // taken now, so a slow or broken stream does not leave the row where it was.
    _unsnoozed(id) {
      var had = null;
      this._tabs.forEach(function (tab) { had = had || tab.items.get(id); });
      if (had) this._onNotification(had.notification, { resurfaced: true, group: had.group });
    }

    _onUpdated(n, ev) {
      var g = ev && ev.group;
      this._tabs.forEach(function (tab) {
        if (g) return regroup(tab, n, g, ev.state);
        var it = tab.items.get(n.id);
        if (it) { it.notification = n; it.v += 1; }
      });
      this._render();
    }

    // A group entry that kept other members came as "updated" just before this.
    _onDeleted(id) {
      this._tabs.forEach(function (tab) { tab.items.delete(id); });
      this._render();
    }

    _onCounts(c) {
      this._counts = c;
      this._renderBell();
    }

    _onStatus(s) {
      var self = this;
      if (s.state === "live") {
        clearTimeout(this._offlineTimer);
        this._offlineTimer = null;
        this._offline = false;
      } else if (s.state === "reconnecting" && !this._offline && !this._offlineTimer) {
        this._offlineTimer = setTimeout(function () {
          self._offlineTimer = null;
          self._offline = true;
          self._renderNote();
        }, OFFLINE_AFTER_MS);
      }
      this._renderNote();
    }

    _onFatal(f) {
      this._fatal = f;
      this._render();
    }

    // -- what the user does -------------------------------------------------------------
    _act(kind, id, until) {
      var c = this._client, self = this;
      if (!c) return;
      var call = kind === "read" ? c.markRead([id]) : kind === "archive" ? c.archive([id])
               : kind === "snooze" ? c.snooze([id], until)
               : kind === "unsnooze" ? c.unsnooze([id]) : c.markAllRead();
      call.then(function (res) {
        if (kind === "all") {
          var ids = [];
          self._tabs.forEach(function (t) {
            t.items.forEach(function (it) { if (isUnread(it)) ids.push(it.id); });
          });
          self._applyState(ids, "read");
        } else if (kind === "snooze") {
          self._applyState([id], "snoozed", until.toISOString());
        } else if (kind === "unsnooze") {
          if (res && res.changed) self._unsnoozed(id);   // else it came back already
        } else {
          self._applyState([id], kind === "archive" ? "archived" : "read");
        }
      }, function (err) { self._showFlash(err); });
    }

    _showFlash(err) {
      var self = this;
      this._flash = fill(this._s().actionFailed, { message: err.message || String(err) });
      this._renderNote();
      clearTimeout(this._flashTimer);
      this._flashTimer = setTimeout(function () { self._flash = ""; self._renderNote(); }, 6000);
    }

    _openItem(e, li) {
      var it = this._tab().items.get(li.dataset.id);
      if (!it) return;
      var go = this.dispatchEvent(new CustomEvent("tidings-click", {
        detail: { id: it.id, notification: it.notification, group: it.group },
        bubbles: true, composed: true, cancelable: true,
      }));
      if (!go) e.preventDefault();      // the app routes itself
      if (isUnread(it)) this._act("read", it.id);
      if (li.querySelector("a.main") || !go) this.open = false;   // leaving for the item
    }

    _selectTab(i) {
      if (i === this._active || !this._tabs[i]) return;
      this._active = i;
      var tab = this._tab();
      if ((!tab.loaded || tab.stale) && !tab.busy) this._loadFirst(tab);
      this._render();
      this.$scroller.scrollTop = 0;
    }

    // Rows that came into view were displayed (a receipt, docs/protocol.md#receipts)
    // and, if unseen, are now seen (docs/protocol.md: mark what the user looked
    // at); both batched.
    _onRowsSeen(entries) {
      var self = this;
      entries.forEach(function (e) {
        if (!e.isIntersecting) return;
        self._seenIO.unobserve(e.target);
        self._seenQueue.add(e.target.dataset.id);
      });
      if (!this._seenQueue.size || this._seenTimer) return;
      this._seenTimer = setTimeout(function () {
        self._seenTimer = null;
        var tab = self._tab(), ids = [], shown = [];
        self._seenQueue.forEach(function (id) {
          var it = tab.items.get(id);
          if (!it) return;
          if (!self._shown.has(id)) { self._shown.add(id); shown.push(id); }
          if (it.state === "unseen") ids.push(it.id);
        });
        self._seenQueue.clear();
        if (!self._client) return;
        if (shown.length) self._client.displayed(shown);
        if (ids.length) self._client.markSeen(ids).catch(function () {});
      }, SEEN_FLUSH_MS);
    }

    _syncOpen() {
      var open = this.open;
      if (this.$panel.hidden === !open) return;
      this.$panel.hidden = !open;
      this.$bell.setAttribute("aria-expanded", String(open));
      if (open) {
        document.addEventListener("pointerdown", this._onOutside, true);
        var tab = this._tab();
        if (tab && (!tab.loaded || tab.stale) && !tab.busy) this._loadFirst(tab);
        this._render();
        // a bell near the left edge opens its panel rightwards, unless align says
        var room = this.getBoundingClientRect().right - this.$panel.offsetWidth;
        this.$panel.classList.toggle("start", !this.hasAttribute("align") && room < 8);
        var first = this.$tablist.querySelector("[aria-selected=true]") || this.$close;
        first.focus();
      } else {
        document.removeEventListener("pointerdown", this._onOutside, true);
        this._closeMenu();
        var wasInside = this.$panel.contains(this.shadowRoot.activeElement);
        this._view = "feed";
        this._render();
        if (wasInside) this.$bell.focus();
      }
      this.dispatchEvent(new CustomEvent("tidings-toggle", {
        detail: { open: open }, bubbles: true, composed: true,
      }));
    }

    _onKey(e) {
      if (!this.open) return;
      var a = this.shadowRoot.activeElement;
      if (this._menu && this._menu.contains(a)) {
        this._menuKey(e);
        if (e.defaultPrevented) return;
      }
      if (a && a.dataset.act === "snooze-menu" && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
        e.preventDefault();
        return this._openMenu(a, e.key === "ArrowUp");
      }
      if (e.key === "Escape") {
        e.preventDefault();
        this.open = false;
        this.$bell.focus();
        return;
      }
      if (e.key === "Tab") return this._trapFocus(e);
      var keys = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -1, ArrowDown: 1, Home: -Infinity,
                   End: Infinity };
      if (!(e.key in keys) || !a) return;
      var step = keys[e.key], list, i;
      if (a.getAttribute("role") === "tab" && !/Up|Down/.test(e.key)) {
        list = this._tabs;                    // tabs: automatic activation, roving tabindex
        if (!isFinite(step)) i = step < 0 ? 0 : list.length - 1;
        else i = (this._active + step + list.length) % list.length;
        e.preventDefault();
        this._selectTab(i);
        this.$tablist.children[i].focus();
        return;
      }
      var li = a.closest && a.closest("li[data-id]");
      if (!li || /Left|Right/.test(e.key)) return;
      list = Array.prototype.slice.call(this.$feed.children);
      i = list.indexOf(li);
      i = !isFinite(step) ? (step < 0 ? 0 : list.length - 1) : i + step;
      if (list[i]) {
        e.preventDefault();
        list[i].querySelector(".main").focus();
      }
    }

    // The panel is a modal dialog: Tab and Shift+Tab cycle inside it.
    _trapFocus(e) {
      var f = Array.prototype.filter.call(
        this.$panel.querySelectorAll("a[href], button:not([disabled]), input:not([disabled]), [tabindex]"),
        function (n) { return n.tabIndex >= 0 && n.getClientRects().length > 0; });
      if (!f.length) return;
      var i = f.indexOf(this.shadowRoot.activeElement);
      e.preventDefault();
      var j = i < 0 ? (e.shiftKey ? f.length - 1 : 0) : (i + (e.shiftKey ? -1 : 1) + f.length) % f.length;
      f[j].focus();
    }

    // -- the row's Snooze menu (the WAI-ARIA menu button pattern) -----------------
    // One menu open at a time, under its button; it closes on a choice, Escape,
    // Tab or a click elsewhere in the panel.
    _openMenu(button, focusLast) {
      this._closeMenu();
      var menu = button.nextElementSibling;
      button.setAttribute("aria-expanded", "true");
      button.parentNode.classList.add("open");
      menu.hidden = false;
      this._menu = menu;
      var items = menu.querySelectorAll("[role=menuitem]");
      items[focusLast ? items.length - 1 : 0].focus();
    }

    _closeMenu(refocus) {
      var menu = this._menu;
      this._menu = null;
      if (!menu) return;
      var button = menu.previousElementSibling;
      menu.hidden = true;
      button.setAttribute("aria-expanded", "false");
      button.parentNode.classList.remove("open");
      if (refocus && button.isConnected) button.focus();
    }

    _menuKey(e) {
      var items = Array.prototype.slice.call(this._menu.querySelectorAll("[role=menuitem]"));
      var i = items.indexOf(this.shadowRoot.activeElement);
      if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); return this._closeMenu(true); }
      if (e.key === "Tab") return this._closeMenu(true);   // then the panel's own Tab
      var to = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: items.length - 1 }[e.key];
      if (to === undefined) return;
      e.preventDefault();
      items[(to + items.length) % items.length].focus();
    }

    // When a choice of the menu ends, in local time: in an hour, tomorrow at 09:00.
    _snoozeUntil(choice) {
      var d = new Date();
      if (choice === "hour") return new Date(d.getTime() + 3600 * 1000);
      d.setDate(d.getDate() + 1);
      d.setHours(9, 0, 0, 0);
      return d;
    }

    _onClick(e) {
      var t = e.target.closest("[data-act], [data-tab]");
      if (this._menu && !(t && this._menu.parentNode.contains(t))) this._closeMenu();
      if (!t) return;
      if (t.dataset.tab !== undefined) return this._selectTab(Number(t.dataset.tab));
      var li = t.closest("li[data-id]");
      switch (t.dataset.act) {
        case "close": this.open = false; this.$bell.focus(); return;
        case "mark-all": return this._act("all");
        case "prefs": return this._openPrefs();
        case "back": this._view = "feed"; this._render(); this.$prefsBtn.focus(); return;
        case "retry": return this._loadFirst(this._tab());
        case "retry-more": this._tab().moreError = null; return this._loadMore();
        case "read": return this._act("read", li.dataset.id);
        case "archive": return this._act("archive", li.dataset.id);
        case "unsnooze": return this._act("unsnooze", li.dataset.id);
        case "snooze-menu":
          if (this._menu && this._menu.previousElementSibling === t) return this._closeMenu();
          return this._openMenu(t);
        case "snooze":
          this._closeMenu(true);
          return this._act("snooze", li.dataset.id, this._snoozeUntil(t.dataset.until));
        case "open": return this._openItem(e, li);
      }
    }

    // -- strings and formats ----------------------------------------------------------
    _locale() {
      var want = this.getAttribute("locale") || document.documentElement.lang ||
                 (root.navigator && root.navigator.language) || "en";
      try { return Intl.getCanonicalLocales(want)[0]; } catch (e) { return "en"; }
    }

    _s() {
      var tag = this._locale();
      if (this._cachedStrings && this._cachedStrings.tag === tag) return this._cachedStrings.s;
      var base = tag.split("-")[0].toLowerCase();
      var s = Object.assign({}, UI.LOCALES.en, UI.LOCALES[base] || {}, this._strings);
      this._cachedStrings = { tag: tag, s: s, plural: new Intl.PluralRules(tag) };
      return s;
    }

    _plural(key, n, vars) {
      var v = this._s()[key], rules = this._cachedStrings.plural;
      var text = typeof v === "string" ? v : v[rules.select(n)] || v.other;
      return fill(text, Object.assign({ n: n.toLocaleString(this._locale()) }, vars || {}));
    }

    _ago(iso) {
      var t = Date.parse(iso);
      if (!isFinite(t)) return "";
      var s = (t - Date.now()) / 1000, abs = Math.abs(s), tag = this._locale();
      if (abs < 45) return this._s().justNow;
      var rtf = new Intl.RelativeTimeFormat(tag, { numeric: "auto" });
      if (abs < 3600) return rtf.format(Math.round(s / 60), "minute");
      if (abs < 86400) return rtf.format(Math.round(s / 3600), "hour");
      if (abs < 7 * 86400) return rtf.format(Math.round(s / 86400), "day");
      return new Date(t).toLocaleDateString(tag, { day: "numeric", month: "short", year: "numeric" });
    }

    _groupText(g) {
      var actors = g.actors || [], total = g.actor_count || actors.length;
      if (!actors.length || total <= 1) return this._plural("count", g.count);
      if (total === 2 && actors.length >= 2) return fill(this._s().two, { a: actors[0], b: actors[1] });
      return this._plural("others", total - 1, { name: actors[0] });
    }

    _updateTimes() {
      var self = this;
      this.$feed.querySelectorAll("time").forEach(function (t) {
        t.textContent = self._ago(t.getAttribute("datetime"));
      });
    }
  }

  Object.assign(TidingsInbox.prototype, View.methods);
  root.customElements.define("tidings-inbox", TidingsInbox);
  return TidingsInbox;
});
