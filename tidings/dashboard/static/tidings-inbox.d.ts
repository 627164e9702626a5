// Type declarations for <tidings-inbox> (docs/inbox.md). Importing the module
// defines the element; its export is the element's class (null where there is
// no DOM, as in server-side rendering).

import Tidings = require("./tidings");

declare namespace TidingsInboxElement {
  /** One tab, filtered by the server: its state, category (any of them) and tags (any of them). */
  interface Tab {
    label?: string;
    state?: "unread" | "unseen" | "seen" | "read" | "archived" | "snoozed" | "all";
    category?: string | string[];
    /** any of these */
    tags?: string[];
    /** the text of the empty state */
    empty?: string;
  }

  /** Every string the element shows; plural ones pick a form with Intl.PluralRules. */
  type Plural = { one?: string; other: string; [form: string]: string | undefined };
  type Strings = Partial<Record<
    | "bell" | "title" | "markAllRead" | "markRead" | "archive" | "unread" | "preferences"
    | "snooze" | "snoozeHour" | "snoozeTomorrow" | "snoozedUntil" | "unsnooze"
    | "close" | "back" | "tabAll" | "tabUnread" | "tabArchived" | "loading" | "loadingMore"
    | "empty" | "emptyUnread" | "emptyArchived" | "offline" | "error" | "actionFailed"
    | "expired" | "retry" | "justNow" | "two" | "prefsTitle" | "category" | "channel_in_app"
    | "channel_push" | "channel_email" | "channel_webhook" | "category_default" | "quietHours"
    | "quietOn" | "quietFrom" | "quietTo" | "timeZone" | "quietHint" | "digest"
    | "digestDefault" | "digestEach" | "digestEvery" | "digestHourly" | "digestDaily"
    | "digestMixed" | "digestAt" | "digestHint" | "digestDefaultIs" | "digestDailyAt"
    | "digestPerChannel" | "save" | "saving" | "saved",
    string>> & Partial<Record<"bellUnread" | "others" | "count", Plural>> &
    { [categoryLabel: `category_${string}`]: string };

  interface ClickDetail {
    id: string;
    notification: Tidings.Notification;
    group: Tidings.Group | null;
  }
}

declare class TidingsInboxElement extends HTMLElement {
  /** A function returning (a promise of) a user token; called before every connect. */
  getToken: (() => string | Promise<string>) | null;
  /** Strings over those of the locale. */
  strings: TidingsInboxElement.Strings;
  /** The panel is open (reflects the `open` attribute). */
  open: boolean;
  /** The tidings.js client, once a token source is set. */
  readonly client: Tidings.Client | null;
  toggle(force?: boolean): void;
}

interface TidingsInboxEventMap extends HTMLElementEventMap {
  /** A row was activated; cancel it to route in the app instead of following the url. */
  "tidings-click": CustomEvent<TidingsInboxElement.ClickDetail>;
  "tidings-toggle": CustomEvent<{ open: boolean }>;
}

interface TidingsInboxElement {
  addEventListener<K extends keyof TidingsInboxEventMap>(
    type: K, listener: (this: TidingsInboxElement, ev: TidingsInboxEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject,
                   options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof TidingsInboxEventMap>(
    type: K, listener: (this: TidingsInboxElement, ev: TidingsInboxEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject,
                      options?: boolean | EventListenerOptions): void;
}

declare global {
  interface HTMLElementTagNameMap {
    "tidings-inbox": TidingsInboxElement;
  }
}

export = TidingsInboxElement;
