// Type declarations for tidings.js, the browser client of tidings (docs/protocol.md).
// In a page it defines the global `Tidings`; through a bundler it is the module's export.

declare namespace Tidings {
  type Transport = "auto" | "websocket" | "sse";
  type State = "unseen" | "seen" | "read" | "archived" | "snoozed";
  type StateFilter = "unread" | "unseen" | "seen" | "read" | "archived" | "snoozed" | "all";
  type Channel = "in_app" | "webhook" | "push" | "email";

  interface Options {
    /** The tidings server, e.g. "https://notify.example.com"; default: the page's origin. */
    url?: string;
    /** A user token (POST /v1/users/{user}/tokens on your backend)... */
    token?: string;
    /** ...or a function giving one, called before every connect, after a 401, and before
     *  the stream's token expires (the stream then goes on with the new one). A live
     *  stream closed with 4401 (its token revoked) reconnects once with a new one. */
    getToken?: () => string | Promise<string>;
    transport?: Transport;
    /** A saved cursor() to resume from. */
    cursor?: string | null;
    /** This device's language (a BCP 47 tag such as "de-AT"), when it differs from the
     *  `locale` of the user's preferences: the inbox pages and the live stream show
     *  notifications in it, and categories() the labels (docs/inbox.md#languages).
     *  Default: the preferences'. Set later, it holds for what is read from then on
     *  (the live stream: from its next connect). */
    locale?: string;
    /** The size of the inbox page loaded on "inbox" (default 20). */
    pageSize?: number;
    /** Reload the inbox page after every resumed reconnect (default true). */
    refreshOnReconnect?: boolean;
    /** Send delivery receipts (default true; docs/protocol.md#receipts). */
    receipts?: boolean;
    /** This device's id in receipts: 1-64 printable characters, not starting with "~"
     * (default: a random id kept in localStorage under "tidings.device"). */
    device?: string;
    /** What a person reads for this device in a notification's timeline, at most 64
     * characters (default: browser and OS from the user agent, "Chrome on macOS"). */
    deviceLabel?: string;
  }

  /** A notification as clients see it; fields left at their default are omitted. */
  interface Notification {
    id: string;
    category: string;
    created_at: string;
    title?: string;
    body?: string;
    /** "markdown": the body is the Markdown subset of docs/protocol.md; absent: plain text. */
    format?: "text" | "markdown";
    url?: string;
    data?: Record<string, unknown>;
    priority?: "low" | "normal" | "high" | "urgent";
    tags?: string[];
    group_key?: string;
    actor?: string;
    /** The language of the notification's text, when the server took one of its
     *  `locales` for this user (a BCP 47 tag; docs/channels.md#languages). */
    locale?: string;
    deliver_at?: string;
    expires_at?: string;
    /** Set on a Web Push payload that had to be shortened. */
    truncated?: boolean;
  }

  /** A group entry's summary (aggregation by group_key). */
  interface Group {
    id: string;
    key: string;
    count: number;
    actor_count: number;
    actors: string[];
    latest_at: string;
    first_id: string;
  }

  interface InboxItem {
    id: string;
    state: State;
    notification: Notification;
    seq?: number;
    feed?: number;
    group?: Group;
    /** A snoozed item (state=snoozed or all): when it comes back (ISO 8601). */
    snoozed_until?: string;
  }

  interface InboxPage {
    items: InboxItem[];
    next_before: string | null;
  }

  interface InboxEvent extends InboxPage {
    reason: "initial" | "unrecovered" | "reconnect" | "manual" | string;
  }

  /** What the "counts" event gives: the badge to show. */
  interface Counts {
    unread: number;
    unseen: number;
  }

  /** Counts as the server sends them, with the position they were read at and
   *  the revision of the user's counts (docs/protocol.md, "Counts and the badge"). */
  interface ServerCounts extends Counts {
    at?: { seq: number; feed: number; rev?: number };
  }

  interface NotificationEvent {
    type: "notification";
    notification: Notification;
    cursor?: string;
    feed?: number;
    group?: Group;
    /** A snoozed entry back at its time (or unsnoozed): put it first, unread. */
    resurfaced?: boolean;
  }

  /** A correction, or (with group) a group entry that lost a member: it shows n now. */
  interface UpdatedEvent {
    type: "updated";
    notification: Notification;
    group?: Group;
    state?: State;
  }

  interface StateChange {
    ids: string[];
    all: boolean;
    state: "seen" | "read" | "archived" | "snoozed";
    /** With state "snoozed": when the entries come back (ISO 8601). */
    until?: string;
  }

  interface Status {
    state: "connecting" | "live" | "reconnecting" | "stopped";
    transport: "websocket" | "sse" | null;
    attempt?: number;
    delay?: number;
    code?: number;
    reason?: string;
  }

  interface ChannelPrefs {
    in_app?: boolean;
    webhook?: boolean;
    push?: boolean;
    email?: boolean;
  }

  interface QuietHours {
    /** "HH:MM", wall-clock time in tz */
    start: string;
    end: string;
    tz?: string;
  }

  /** {"every": seconds}, {"daily": "HH:MM", "tz": zone}, or {} (each one on its own). */
  interface DigestRule {
    every?: number;
    daily?: string;
    tz?: string;
  }

  type DigestRules = Record<string, Partial<Record<"webhook" | "push" | "email", DigestRule>>>;

  interface Preferences {
    categories?: Record<string, ChannelPrefs>;
    quiet_hours?: QuietHours | null;
    digests?: DigestRules;
    /** The language notifications are shown in (a BCP 47 tag such as "de-AT"). */
    locale?: string;
  }

  /** A change to part of the preferences (a JSON merge patch): what it names
   * changes, `null` removes, the rest is kept. */
  interface PreferencesPatch {
    categories?: Record<string, Partial<ChannelPrefs> | null>;
    quiet_hours?: QuietHours | null;
    digests?: Record<string, Record<string, DigestRule | null> | null>;
    locale?: string | null;
  }

  /** A document and its ETag (not enumerable: the object can be sent back as it is). */
  type Tagged<T> = T & { readonly etag: string };

  interface Category {
    id: string;
    /** in the reader's language when the app gave one that fits */
    label: string;
    description?: string;
    /** the tag of the translation taken; absent: the app's own label */
    locale?: string;
  }

  interface AppCategories {
    /** in the order the app declared them */
    categories: Category[];
    /** the language the labels were asked in, when the app has translations */
    locale?: string;
    /** the app's digest defaults, for a user who has no rule of their own */
    digests: DigestRules;
  }

  interface StateResult {
    counts?: ServerCounts;
    [key: string]: unknown;
  }

  interface Events {
    inbox: (page: InboxEvent) => void;
    notification: (n: Notification, event: NotificationEvent) => void;
    counts: (counts: Counts) => void;
    state: (change: StateChange) => void;
    updated: (n: Notification, event: UpdatedEvent) => void;
    deleted: (id: string) => void;
    recovered: (r: { ok: boolean; missed: number }) => void;
    hello: (event: { type: "hello"; epoch: string; cursor: string; counts?: ServerCounts }) => void;
    status: (status: Status) => void;
    fatal: (f: { code: number; reason: string }) => void;
    error: (err: TidingsError) => void;
  }

  /** What a failed API call rejects with. */
  interface TidingsError extends Error {
    name: "TidingsError";
    status: number;
    code: string;
  }

  class Client {
    constructor(options: Options);
    readonly url: string;
    /** The id and label this device's receipts carry (Options.device, deviceLabel). */
    readonly device: string;
    readonly deviceLabel: string;
    status: Status["state"];
    on<K extends keyof Events>(type: K, fn: Events[K]): () => void;
    off<K extends keyof Events>(type: K, fn: Events[K]): void;
    /** "<epoch>:<seq>[:<feed>]", or null before the first hello. */
    cursor(): string | null;
    reload(reason?: string): Promise<void>;
    /** category and tags: any of them, filtered by the server (at most 20 of each). */
    inbox(options?: { limit?: number; before?: string; state?: StateFilter;
                      category?: string | string[]; tags?: string | string[] }): Promise<InboxPage>;
    counts(): Promise<ServerCounts>;
    markRead(ids: string[]): Promise<StateResult>;
    markAllRead(): Promise<StateResult>;
    markSeen(ids: string[]): Promise<StateResult>;
    archive(ids: string[]): Promise<StateResult>;
    /** Out of the inbox and the counts until `until` (a Date, or ISO 8601 with a zone;
     *  at most 90 days ahead); every device gets a "state" event "snoozed". */
    snooze(ids: string[], until: Date | string): Promise<StateResult & { until: string }>;
    /** Snoozed entries back now: each arrives as a "notification" with resurfaced. */
    unsnooze(ids: string[]): Promise<StateResult>;
    preferences(): Promise<Tagged<Preferences>>;
    /** With {ifNoneMatch: prefs.etag}: null while they are still those. */
    preferences(options: { ifNoneMatch?: string }): Promise<Tagged<Preferences> | null>;
    /** With {ifMatch: prefs.etag}: rejects with status 412 when they changed since. */
    setPreferences(prefs: Preferences, options?: { ifMatch?: string }):
      Promise<Tagged<Preferences>>;
    /** Change only what `patch` names; the preferences as stored. */
    updatePreferences(patch: PreferencesPatch, options?: { ifMatch?: string }):
      Promise<Tagged<Preferences>>;
    /** The app's categories and digest defaults (GET /v1/me/categories);
     * with {ifNoneMatch: etag}: null while they are still those. */
    categories(): Promise<Tagged<AppCategories>>;
    categories(options: { ifNoneMatch?: string }): Promise<Tagged<AppCategories> | null>;
    /** Report notifications the user had on screen (a "displayed" receipt, batched). */
    displayed(ids: string[]): void;
    close(): void;
  }

  const version: string;
  function connect(options: Options): Client;
}

export = Tidings;
export as namespace Tidings;
