/*! tidings.js: the browser client of tidings. No dependencies. Apache-2.0.
 *
 * Live stream over WebSocket (SSE when WebSockets are blocked or asked for),
 * reconnects with jittered exponential backoff and resumes from its cursor,
 * drops duplicate notifications by id, and never reconnects on a 4400-4499
 * close code (but for one reconnect with a new token from getToken after a
 * 4401 on a live stream: a revoked token). The wire protocol is docs/protocol.md.
 *
 *   <script src="https://notify.example.com/tidings.js"></script>
 *   const client = Tidings.connect({
 *     url: "https://notify.example.com",          // default: this page's origin
 *     getToken: () => fetch("/my-backend/tidings-token").then(r => r.text()),
 *   });
 *   client.on("inbox", (page) => render(page.items));   // first load, and reloads
 *   client.on("notification", (n, ev) =>          // ev.group: a group entry's update
 *     ev.group ? replaceRow(ev.group.id, n, ev.group) : prepend(n));
 *   client.on("updated", (n, ev) =>               // ev.group: the entry now shows n
 *     ev.group ? replaceRow(ev.group.id, n, ev.group, ev.state) : replace(n));
 *   client.on("counts", (c) => setBadge(c.unread));
 *   client.on("state", (s) => markLocally(s.ids, s.state));
 *   await client.markRead([id]);
 */
(function (root) {
  "use strict";

  // tidings/errors.py: 4400-4499 mean "do not reconnect"; any other code, or
  // none at all (1006), means "reconnect with backoff and resume".
  var FATAL_MIN = 4400, FATAL_MAX = 4499;
  var UNAUTHORIZED = 4401;  // the token is refused: do not reconnect with the same one
  // Full jitter, the schedule of tidings/core/backoff.py: 0..min(20 s, 250 ms * 2^n).
  var BACKOFF_BASE_MS = 250, BACKOFF_CAP_MS = 20000;
  var SEEN_MAX = 5000;  // ids remembered for de-duplication
  // The badge (docs/protocol.md, "Counts and the badge"): notifications
  // remembered past the last counts taken (a counts event is overtaken only by
  // the few that commit while it is on its way), and the delays before asking
  // GET /v1/me/counts again while its answer predates an update of a group
  // entry (another node's cache that has not heard of it yet).
  var COUNTED_MAX = 1000, ASK_AGAIN_MS = [250, 500, 1000];
  // A call refused with 429 (the user's rate limit: nothing was done) is sent
  // once more after its Retry-After, at most this many seconds.
  var RETRY_429_MAX_S = 30;
  // Receipts (docs/protocol.md#receipts): ids gathered for a second, then sent
  // as one message (WebSocket) or one POST (SSE), at most RECEIPTS_MAX ids in
  // each, so a message stays under the server's 4,096 bytes.
  var RECEIPTS_DELAY_MS = 1000, RECEIPTS_MAX = 100;
  var DEVICE_KEY = "tidings.device";  // localStorage: this browser's device id

  // The server's rule for a device id (docs/protocol.md#receipts): printable,
  // at most 64 characters, not starting with "~" (ids the server gives).
  var DEVICE_RE = /^[^\x00-\x1f\x7f~][^\x00-\x1f\x7f]*$/;

  // This browser's device id, kept in localStorage so that the timeline of a
  // notification shows one device per browser (a new one per page load where
  // storage is blocked).
  function deviceId() {
    var id = null;
    try { id = root.localStorage.getItem(DEVICE_KEY); } catch (e) { /* blocked */ }
    if (id && /^[0-9a-f]{32}$/.test(id)) return id;
    var bytes = new Uint8Array(16);
    if (root.crypto && root.crypto.getRandomValues) root.crypto.getRandomValues(bytes);
    else for (var i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
    id = Array.prototype.map.call(bytes, function (b) { return (b < 16 ? "0" : "") + b.toString(16); }).join("");
    try { root.localStorage.setItem(DEVICE_KEY, id); } catch (e) { /* blocked */ }
    return id;
  }

  // "Chrome on macOS": what a person recognises in a notification's timeline.
  function deviceLabel() {
    var ua = (root.navigator && root.navigator.userAgent) || "";
    var browser = /Edg\//.test(ua) ? "Edge" : /OPR\//.test(ua) ? "Opera" : /Firefox\//.test(ua) ? "Firefox"
      : /Chrome\//.test(ua) ? "Chrome" : /Safari\//.test(ua) ? "Safari" : "Browser";
    var os = /Android/.test(ua) ? "Android" : /iPhone|iPad|iPod/.test(ua) ? "iOS" : /CrOS/.test(ua) ? "ChromeOS"
      : /Windows/.test(ua) ? "Windows" : /Mac OS X/.test(ua) ? "macOS" : /Linux/.test(ua) ? "Linux" : "";
    return os ? browser + " on " + os : browser;
  }

  // A token's exp in ms (read, not verified: only to plan its replacement), or null.
  function tokenExp(token) {
    try {
      var part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      var exp = JSON.parse(root.atob(part + "===".slice((part.length + 3) % 4))).exp;
      return typeof exp === "number" && isFinite(exp) ? exp * 1000 : null;
    } catch (e) { return null; }
  }

  function TidingsError(status, code, message) {
    var err = new Error(message || code);
    err.name = "TidingsError";
    err.status = status;
    err.code = code;
    return err;
  }

  function Client(options) {
    options = options || {};
    this.url = String(options.url || root.location.origin).replace(/\/+$/, "");
    if (!options.token && !options.getToken) throw new TypeError("tidings: token or getToken is required");
    this._token = options.token || null;
    this._getToken = options.getToken || null;
    this.transport = options.transport || "auto";  // "auto" | "websocket" | "sse"
    this.pageSize = options.pageSize || 20;
    // this device's language, when it differs from the user's preferences' (a BCP 47 tag)
    this.locale = options.locale || null;
    this.refreshOnReconnect = options.refreshOnReconnect !== false;
    this._handlers = {};
    this._epoch = null; this._seq = 0; this._feed = null;
    if (options.cursor) this._setCursor(options.cursor);
    this._seen = new Set();
    this._sock = null; this._using = null;
    this._timer = null; this._attempt = 0;
    this._refreshTimer = null;  // replaces the stream's token before it expires
    this._stopped = false;
    this._wsBlocked = false;
    this._hellos = 0;
    this._authRetry = false;    // one fresh-token reconnect after a 4401 on a live stream
    this._reloads = 0;
    this._counts = null;        // {unread, unseen}: the badge, as last emitted
    this._base = null;          // the counts last taken from the server
    this._at = null;            // {seq, feed}: where they were read (null: not said)
    this._counted = [];         // notifications counted since: {kind, pos, unread, unseen, ask}
    this._lost = [-1, -1];      // the newest seq and feed forgotten for room
    this._stale = false;        // counts taken from before a forgotten notification
    this.receipts = options.receipts !== false;
    this.device = options.device == null ? deviceId() : String(options.device);
    if (!DEVICE_RE.test(this.device) || Array.from(this.device).length > 64)
      throw new TypeError("tidings: device must be 1-64 printable characters, not starting with ~");
    // at most 64 characters and no control characters, or the server ignores the batch
    this.deviceLabel = Array.from(String(options.deviceLabel || deviceLabel())
      .replace(/[\x00-\x1f\x7f]/g, " ")).slice(0, 64).join("");
    this._acks = { delivered: [], displayed: [] };
    this._acksTimer = null;
    this._replaying = false;    // between a resuming hello and its "recovered"
    this.status = "connecting";
    var self = this;
    this._onOnline = function () { self._wake(); };
    if (root.addEventListener) root.addEventListener("online", this._onOnline);
    // Connect after the caller had a chance to attach handlers.
    Promise.resolve().then(function () { self._connect(); });
  }

  // -- events -----------------------------------------------------------------
  Client.prototype.on = function (type, fn) {
    (this._handlers[type] = this._handlers[type] || []).push(fn);
    var self = this;
    return function off() { self.off(type, fn); };
  };

  Client.prototype.off = function (type, fn) {
    var list = this._handlers[type] || [];
    var i = list.indexOf(fn);
    if (i >= 0) list.splice(i, 1);
  };

  Client.prototype._emit = function (type) {
    var args = Array.prototype.slice.call(arguments, 1);
    var list = (this._handlers[type] || []).slice();
    for (var i = 0; i < list.length; i++) {
      try { list[i].apply(null, args); }
      catch (err) { if (root.console) root.console.error("tidings: a '" + type + "' handler threw", err); }
    }
  };

  Client.prototype._setStatus = function (state, extra) {
    this.status = state;
    var info = { state: state, transport: this._using };
    for (var k in extra || {}) info[k] = extra[k];
    this._emit("status", info);
  };

  // -- the resume position (docs/protocol.md, "Cursors") -----------------------
  Client.prototype._setCursor = function (cursor) {
    var p = String(cursor).split(":");
    this._epoch = p[0];
    this._seq = Number(p[1]) || 0;
    this._feed = p.length > 2 ? Number(p[2]) : null;
  };

  /** The cursor to resume from ("<epoch>:<seq>[:<feed>]"), or null before the first hello. */
  Client.prototype.cursor = function () {
    if (this._epoch === null) return null;
    return this._feed === null ? this._epoch + ":" + this._seq
                               : this._epoch + ":" + this._seq + ":" + this._feed;
  };

  // -- one event from either transport -----------------------------------------
  Client.prototype._handle = function (ev) {
    if (!ev || typeof ev.type !== "string") return;
    switch (ev.type) {
      case "hello": {
        this._replaying = this._epoch !== null;   // we sent a cursor: a replay follows
        this._setCursor(ev.cursor);   // where the server continues on this connection
        this._hellos += 1;
        this._attempt = 0;            // a good connection resets the backoff
        this._authRetry = !!this._getToken;
        this._setStatus("live");
        this._emit("hello", ev);
        if (ev.counts) this._helloCounts(ev.counts);
        if (this._hellos === 1) this.reload("initial");
        this._planRefresh(tokenExp(this._token));
        return;
      }
      case "token":                                   // a fresh token was taken
        this._planRefresh(ev.until == null ? null : ev.until * 1000);
        return;
      case "notification": {
        if (typeof ev.cursor === "string") {          // personal: "<epoch>:<seq>"
          var p = ev.cursor.split(":");
          if (p[0] === this._epoch && Number(p[1]) > this._seq) this._seq = Number(p[1]);
        } else if (typeof ev.feed === "number" && (this._feed === null || ev.feed > this._feed)) {
          this._feed = ev.feed;                       // broadcast or large topic
        }
        var n = ev.notification;
        // an entry back from a snooze comes again under its id, once per position
        var seenKey = n && ev.resurfaced ? n.id + "@" + ev.cursor : n && n.id;
        if (!n || this._seen.has(seenKey)) return;    // a replay overlap: already shown
        this._seen.add(seenKey);
        if (this._seen.size > SEEN_MAX) this._seen.delete(this._seen.values().next().value);
        this._emit("notification", n, ev);
        this._ack("delivered", [n.id]);               // live or replayed: it arrived
        this._countArrival(ev);
        return;
      }
      case "recovered":
        this._replaying = false;
        this._emit("recovered", { ok: ev.ok, missed: ev.missed });
        if (!ev.ok) this.reload("unrecovered");       // the gap cannot be replayed
        else if (this._hellos > 1 && this.refreshOnReconnect) this.reload("reconnect");
        return;
      case "counts":
        this._takeCounts(ev);
        return;
      case "state": {
        var change = { ids: ev.ids || [], all: !!ev.all, state: ev.state };
        if (ev.until) change.until = ev.until;        // snoozed until then
        this._emit("state", change);
        return;
      }
      case "updated":                                 // ev.group: a group entry's new form
        this._emit("updated", ev.notification, ev);
        return;
      case "deleted":
        this._emit("deleted", ev.id);
        return;
    }
  };

  // -- the badge (docs/protocol.md, "Counts and the badge") ---------------------
  // Every counts object says where it was read (at: the user's head seq and the
  // app's feed head, in the same snapshot, and rev, the revision of the user's
  // counts that every change moving them without a position raises). The badge
  // is the last counts taken plus the notifications that arrived past that
  // position; counts read before the ones held are ignored, and newer ones are
  // taken with the notifications already counted past them added again (they
  // arrived first).
  function position(c) {
    var at = c && c.at;
    return at && typeof at.seq === "number" && typeof at.feed === "number" ? at : null;
  }

  // Whether counts c, read at `at`, were read before the ones held. At the same
  // position and rev only expiries (which write nothing) came between two reads,
  // and they only lower the counts: the higher ones are the older.
  function older(at, c, held, taken) {
    if (at.seq < held.seq || at.feed < held.feed) return true;
    if (typeof at.rev !== "number" || typeof held.rev !== "number") return false;   // an older server
    if (at.rev !== held.rev) return at.rev < held.rev;
    return at.seq === held.seq && at.feed === held.feed &&
      (c.unread > taken.unread || c.unseen > taken.unseen);
  }

  Client.prototype._helloCounts = function (c) {   // a new stream: start over
    this._counted = []; this._lost = [-1, -1]; this._stale = false; this._at = null;
    this._takeCounts(c);
  };

  /** Take counts from an event or an answer; false when they were read before the ones held. */
  Client.prototype._takeCounts = function (c) {
    if (!c || typeof c.unread !== "number" || typeof c.unseen !== "number") return false;
    var at = position(c), held = this._at;
    if (at && held && older(at, c, held, this._taken)) return false;
    this._base = { unread: c.unread, unseen: c.unseen };
    this._taken = this._base;                        // as the server said (_base absorbs the forgotten)
    this._at = at ? { seq: at.seq, feed: at.feed, rev: at.rev } : null;
    if (!at) this._counted = [];                     // a server that does not say: as they come
    else {
      var limit = [at.seq, at.feed];
      this._counted = this._counted.filter(function (x) { return x.pos > limit[x.kind]; });
      this._stale = this._lost[0] > at.seq || this._lost[1] > at.feed;
    }
    this._showCounts();
    return true;
  };

  Client.prototype._countArrival = function (ev) {
    if (!this._base) return;
    if (!this._at && this._replaying) return;        // hello's counts hold the replay (no at)
    var kind, pos;
    if (typeof ev.cursor === "string") { kind = 0; pos = Number(ev.cursor.split(":")[1]); }
    else if (typeof ev.feed === "number") { kind = 1; pos = ev.feed; }
    else return;
    if (!isFinite(pos)) return;
    if (this._at && pos <= (kind ? this._at.feed : this._at.seq)) return;   // counted already
    // an update of a group entry: it was unread, so not one more; whether it was
    // seen (and is unseen again now) only the server knows, so ask it
    var update = !!(ev.group && ev.group.count > 1);
    this._counted.push({ kind: kind, pos: pos, unread: update ? 0 : 1, unseen: update ? 0 : 1, ask: update });
    if (this._counted.length > COUNTED_MAX) {        // forget the oldest, keep the sum
      var old = this._counted.shift();
      this._lost[old.kind] = Math.max(this._lost[old.kind], old.pos);
      this._base = { unread: this._base.unread + old.unread, unseen: this._base.unseen + old.unseen };
    }
    this._showCounts();
    if (this._mustAsk()) this._refreshCounts();
  };

  Client.prototype._mustAsk = function () {
    return this._stale || this._counted.some(function (x) { return x.ask; });
  };

  Client.prototype._showCounts = function () {
    var c = { unread: this._base.unread, unseen: this._base.unseen };
    this._counted.forEach(function (x) { c.unread += x.unread; c.unseen += x.unseen; });
    this._counts = c;
    this._emit("counts", { unread: c.unread, unseen: c.unseen });
  };

  /**
   * Load the newest inbox page and emit it as "inbox" ({items, next_before, reason}).
   * Runs by itself after the first hello, after recovered:false, and (unless
   * refreshOnReconnect is false) after every resumed reconnect, because read
   * state, edits and deletions are not replayed.
   */
  Client.prototype.reload = function (reason) {
    var self = this, mine = ++this._reloads;
    return this.inbox({ limit: this.pageSize }).then(function (page) {
      if (mine !== self._reloads || self._stopped) return;   // a newer reload won
      page.reason = reason || "manual";
      self._emit("inbox", page);
    }, function (err) { self._emit("error", err); });
  };

  // -- connecting ---------------------------------------------------------------
  Client.prototype._freshToken = function () {
    var self = this;
    if (!this._getToken) return Promise.resolve(this._token);
    return Promise.resolve(this._getToken()).then(function (t) { self._token = t; return t; });
  };

  Client.prototype._connect = function () {
    var self = this;
    this._timer = null;
    if (this._stopped) return;
    this._setStatus(this._hellos ? "reconnecting" : "connecting", { attempt: this._attempt });
    this._freshToken().then(function (token) {
      if (self._stopped) return;
      var ws = self.transport === "websocket" ||
               (self.transport === "auto" && typeof root.WebSocket === "function" && !self._wsBlocked);
      if (ws) self._openWebSocket(token); else self._openEventSource(token);
    }, function () { self._retry(); });
  };

  Client.prototype._openWebSocket = function (token) {
    var self = this, pos = this.cursor(), opened = false;
    var q = [];
    if (pos) q.push("cursor=" + encodeURIComponent(pos));
    if (this.locale) q.push("locale=" + encodeURIComponent(this.locale));
    var sock = new root.WebSocket(this.url.replace(/^http/, "ws") + "/v1/me/stream" +
                                  (q.length ? "?" + q.join("&") : ""));
    this._sock = sock; this._using = "websocket";
    sock.onopen = function () {
      opened = true;
      sock.send(JSON.stringify({ type: "auth", token: token }));  // browsers cannot set headers
    };
    sock.onmessage = function (m) {
      var data;
      try { data = JSON.parse(m.data); } catch (e) { return; }
      var list = Array.isArray(data) ? data : [data];          // a frame may carry several
      for (var i = 0; i < list.length; i++) self._handle(list[i]);
    };
    sock.onclose = function (e) {
      if (self._sock !== sock) return;
      self._sock = null;
      if (self._stopped) return;
      // A live stream refused its token (revoked, or a fresh one that is not
      // valid): one reconnect with a new token from getToken; refused again
      // before a hello, the token source is broken and the client stops.
      if (e.code === UNAUTHORIZED && self._authRetry) { self._authRetry = false; return self._retry(); }
      if (e.code >= FATAL_MIN && e.code <= FATAL_MAX) return self._fatal(e.code, e.reason);
      if (opened || self.transport !== "auto") return self._retry();
      // Never opened: the server is down, or something between us blocks
      // WebSockets. If plain HTTP gets through, use SSE from now on.
      self._probe().then(function (status) {
        if (self._stopped) return;
        if (status === 401) return self._fatal(4401, "token rejected");
        if (status > 0) { self._wsBlocked = true; self._attempt = 0; return self._connect(); }
        self._retry();
      });
    };
  };

  Client.prototype._openEventSource = function (token) {
    var self = this, pos = this.cursor();
    var qs = "token=" + encodeURIComponent(token) + (pos ? "&cursor=" + encodeURIComponent(pos) : "") +
             (this.locale ? "&locale=" + encodeURIComponent(this.locale) : "");
    var es = new root.EventSource(this.url + "/v1/me/events?" + qs);
    this._sock = es; this._using = "sse";
    es.onmessage = function (m) {
      var ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      self._handle(ev);
    };
    es.onerror = function () {
      if (self._sock !== es) return;
      // CONNECTING: the browser reconnects by itself, sending Last-Event-ID
      // (the cursor), after the server's retry: delay.
      if (es.readyState !== 2) { if (self.status === "live") self._setStatus("reconnecting"); return; }
      // CLOSED: a non-200 answer, which EventSource never retries. Its status
      // is hidden from scripts, so ask the API whether the token still works.
      es.close();
      self._sock = null;
      if (self._stopped) return;
      self._probe().then(function (status) {
        if (self._stopped) return;
        if (status === 401) return self._fatal(4401, "token rejected");
        self._retry();
      });
    };
  };

  /** HTTP status of GET /v1/me/counts with a fresh token; 0 when unreachable. */
  Client.prototype._probe = function () {
    var self = this;
    return this._freshToken().then(function (token) {
      return root.fetch(self.url + "/v1/me/counts", {
        headers: { Authorization: "Bearer " + token }, cache: "no-store",
      }).then(function (r) { return r.status; });
    }).catch(function () { return 0; });
  };

  Client.prototype._retry = function () {
    if (this._stopped || this._timer) return;
    var delay = Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, this._attempt));
    this._attempt = Math.min(this._attempt + 1, 16);
    this._setStatus("reconnecting", { delay: Math.round(delay) });
    var self = this;
    this._timer = setTimeout(function () { self._connect(); }, delay);
  };

  Client.prototype._wake = function () {   // the network is back: skip the wait
    if (this._timer && !this._stopped) {
      clearTimeout(this._timer);
      this._timer = null;
      this._connect();
    }
  };

  // -- token lifetime ----------------------------------------------------------------
  // The server ends a stream when its token expires (4004, or the end of an SSE
  // response). With getToken, the client replaces the token first: a minute
  // before the end, or when four fifths of what is left have passed. On a
  // WebSocket the new token goes over the open stream (the server answers
  // "token"); SSE cannot send, so its stream is reopened from the cursor.
  Client.prototype._planRefresh = function (endsAt) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this._getToken || this._stopped || endsAt == null) return;
    var self = this, sock = this._sock, left = endsAt - Date.now();
    this._refreshTimer = setTimeout(function () { self._refreshToken(sock); },
                                    Math.max(0, left - Math.min(60000, left / 5)));
  };

  Client.prototype._refreshToken = function (sock) {
    var self = this, old = this._token;
    this._refreshTimer = null;
    this._freshToken().then(function (token) {
      // the same token again: nothing to renew; the stream ends and reconnects
      if (self._stopped || self._sock !== sock || token === old) return;
      if (self._using === "websocket") {
        if (sock.readyState === 1) sock.send(JSON.stringify({ type: "auth", token: token }));
      } else {
        sock.close();
        self._sock = null;
        self._openEventSource(token);
      }
    }, function () {});                 // getToken failed: the stream ends, then retries
  };

  Client.prototype._fatal = function (code, reason) {
    this._stopped = true;
    this._setStatus("stopped", { code: code, reason: reason });
    this._emit("fatal", { code: code, reason: reason || "" });
  };

  // -- receipts ------------------------------------------------------------------
  /** Report notifications the user actually had on screen (receipts: "displayed"). */
  Client.prototype.displayed = function (ids) { this._ack("displayed", ids); };

  Client.prototype._ack = function (kind, ids) {
    if (!this.receipts || this._stopped) return;
    var list = this._acks[kind];
    for (var i = 0; i < ids.length; i++) list.push(ids[i]);
    var self = this;
    if (!this._acksTimer) this._acksTimer = setTimeout(function () { self._sendAcks(); }, RECEIPTS_DELAY_MS);
  };

  // Best effort: receipts are statistics, so one that cannot be sent is dropped.
  Client.prototype._sendAcks = function () {
    this._acksTimer = null;
    var acks = this._acks, sock = this._sock;
    while (acks.delivered.length || acks.displayed.length) {
      var batch = { type: "receipts", device: this.device, label: this.deviceLabel }, room = RECEIPTS_MAX;
      ["delivered", "displayed"].forEach(function (kind) {
        var part = acks[kind].splice(0, room);
        room -= part.length;
        if (part.length) batch[kind] = part;
      });
      if (this._using === "websocket" && sock && sock.readyState === 1 && this.status === "live") {
        sock.send(JSON.stringify(batch));
      } else {
        delete batch.type;
        this._request("POST", "/v1/me/receipts", batch).catch(function () {});
      }
    }
  };

  /** Stop for good (close the stream, no reconnect). */
  Client.prototype.close = function () {
    if (this._acksTimer) { clearTimeout(this._acksTimer); this._sendAcks(); }
    this._stopped = true;
    clearTimeout(this._timer);
    clearTimeout(this._refreshTimer);
    this._timer = this._refreshTimer = null;
    if (root.removeEventListener) root.removeEventListener("online", this._onOnline);
    var sock = this._sock;
    this._sock = null;
    if (sock) sock.close(sock instanceof root.EventSource ? undefined : 1000);
    this._setStatus("stopped");
  };

  // -- the client API (docs/design.md §4), with the user token ---------------------------
  Client.prototype._request = function (method, path, body, retried, headers) {
    var self = this;
    var token = this._token ? Promise.resolve(this._token) : this._freshToken();
    return token.then(function (t) {
      var init = { method: method, headers: Object.assign({ Authorization: "Bearer " + t }, headers),
                   cache: "no-store" };
      // keepalive: a "mark read" sent as the page follows a link still arrives
      if (method !== "GET") init.keepalive = true;
      if (body !== undefined) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      return root.fetch(self.url + path, init);
    }).then(function (r) {
      if (r.status === 401 && self._getToken && !retried) {   // expired: one fresh token
        self._token = null;
        return self._request(method, path, body, true, headers);
      }
      if (r.status === 429 && !retried) {   // over the user's rate limit: nothing was done
        var wait = Math.min(RETRY_429_MAX_S, Number(r.headers.get("Retry-After")) || 1);
        return new Promise(function (resolve) { setTimeout(resolve, wait * 1000); })
          .then(function () { return self._request(method, path, body, true, headers); });
      }
      if (r.status === 304) return null;   // {ifNoneMatch}: the copy the caller has is current
      return r.json().catch(function () { return {}; }).then(function (doc) {
        if (r.ok) return tagged(doc, r.headers.get("ETag"));
        var e = doc.error || {};
        throw TidingsError(r.status, e.code || "http_" + r.status, e.message || r.statusText);
      });
    });
  };

  /** One inbox page, newest first: {items: [{id, state, notification}], next_before}. */
  // opts.category and opts.tags (a string or a list: any of them) are filtered
  // by the server, so a page is full however rare they are.
  Client.prototype.inbox = function (opts) {
    opts = opts || {};
    var q = [];
    if (opts.limit) q.push("limit=" + encodeURIComponent(opts.limit));
    if (opts.before) q.push("before=" + encodeURIComponent(opts.before));
    if (opts.state) q.push("state=" + encodeURIComponent(opts.state));
    if (this.locale) q.push("locale=" + encodeURIComponent(this.locale));
    [["category", opts.category], ["tag", opts.tags]].forEach(function (p) {
      if (p[1] === undefined || p[1] === null) return;
      [].concat(p[1]).forEach(function (v) { q.push(p[0] + "=" + encodeURIComponent(v)); });
    });
    return this._request("GET", "/v1/me/notifications" + (q.length ? "?" + q.join("&") : ""));
  };

  /** {unread, unseen, at}: the server's counts (the badge takes them, unless older than its own). */
  Client.prototype.counts = function () {
    var self = this;
    return this._request("GET", "/v1/me/counts").then(function (c) { self._takeCounts(c); return c; });
  };

  // One counts request at a time; updates arriving meanwhile ask once more after
  // it, and an answer read before an update it was asked for is asked again.
  Client.prototype._refreshCounts = function (again) {
    var self = this;
    if (this._countsBusy) { this._countsAgain = true; return; }
    this._countsBusy = true;
    this.counts().catch(function () {}).then(function () {
      self._countsBusy = false;
      var tries = again || 0;
      if (self._countsAgain) { self._countsAgain = false; self._refreshCounts(); }
      else if (self._mustAsk() && tries < ASK_AGAIN_MS.length && !self._stopped) {
        setTimeout(function () { self._refreshCounts(tries + 1); }, ASK_AGAIN_MS[tries]);
      }
    });
  };

  Client.prototype._setState = function (what, ids) {
    var self = this;
    var body = ids === true ? { all: true } : { ids: ids };
    return this._request("POST", "/v1/me/notifications/" + what, body).then(function (res) {
      if (res.counts) self._takeCounts(res.counts);   // every device also gets state + counts live
      return res;
    });
  };

  Client.prototype.markRead = function (ids) { return this._setState("read", ids); };
  Client.prototype.markAllRead = function () { return this._setState("read", true); };
  Client.prototype.markSeen = function (ids) { return this._setState("seen", ids); };
  Client.prototype.archive = function (ids) { return this._setState("archive", ids); };

  /** Out of the inbox and the counts until `until` (a Date, or ISO 8601 with a zone). */
  Client.prototype.snooze = function (ids, until) {
    var self = this;
    var at = until instanceof Date ? until.toISOString() : until;
    return this._request("POST", "/v1/me/notifications/snooze", { ids: ids, until: at })
      .then(function (res) { if (res.counts) self._takeCounts(res.counts); return res; });
  };

  /** Snoozed entries back now: each arrives as a "notification" event with resurfaced. */
  Client.prototype.unsnooze = function (ids) { return this._setState("unsnooze", ids); };

  // An answer's ETag (the preferences', the categories'), as a property JSON.stringify
  // and a spread leave out: the object can be edited and sent back as it is.
  function tagged(doc, etag) {
    if (etag && doc && typeof doc === "object") {
      Object.defineProperty(doc, "etag", { value: etag, enumerable: false });
    }
    return doc;
  }

  function ifMatch(opts) {
    return opts && opts.ifMatch ? { "If-Match": opts.ifMatch } : undefined;
  }

  function ifNoneMatch(opts) {
    return opts && opts.ifNoneMatch ? { "If-None-Match": opts.ifNoneMatch } : undefined;
  }

  /** The user's preferences: {categories: {name: {in_app, webhook, push, email}}, quiet_hours};
   * `prefs.etag` (not enumerable) is what the writes below take as {ifMatch}.
   * With {ifNoneMatch: prefs.etag}, resolves to null while they are still those. */
  Client.prototype.preferences = function (opts) {
    return this._request("GET", "/v1/me/preferences", undefined, false, ifNoneMatch(opts));
  };

  /** The app's categories ({id, label, description?, locale?}, in its order, in the
   * user's language or the client's `locale`) and its digest defaults ({category:
   * {channel: rule}}): {categories, digests, locale?}, with an `etag`;
   * with {ifNoneMatch: etag}, null while they are still those. */
  Client.prototype.categories = function (opts) {
    var q = this.locale ? "?locale=" + encodeURIComponent(this.locale) : "";
    return this._request("GET", "/v1/me/categories" + q, undefined, false, ifNoneMatch(opts));
  };

  /** Replace the user's preferences (the whole object, as preferences() returns it).
   * With {ifMatch: prefs.etag}, only if they are still those read: else it rejects with
   * status 412, code "precondition_failed", and nothing changes. Resolves to them as stored. */
  Client.prototype.setPreferences = function (prefs, opts) {
    return this._request("PUT", "/v1/me/preferences", prefs, false, ifMatch(opts));
  };

  /** Change only what `patch` names (a JSON merge patch: `null` removes), e.g.
   * {categories: {social: {email: false}}}; resolves to the preferences as stored.
   * Changes made elsewhere meanwhile (another device, an unsubscribe link) are kept;
   * {ifMatch: etag} refuses it (412) when anything changed since that etag was read. */
  Client.prototype.updatePreferences = function (patch, opts) {
    return this._request("PATCH", "/v1/me/preferences", patch, false, ifMatch(opts));
  };

  var Tidings = {
    version: "1",
    Client: Client,
    /** Start a client; see the top of this file. */
    connect: function (options) { return new Client(options); },
  };
  if (typeof module === "object" && module.exports) module.exports = Tidings;
  else root.Tidings = Tidings;
})(typeof window !== "undefined" ? window : this);
