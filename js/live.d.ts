// Types of tilewarm/live (live.js): following a server's change feed.
import type { Invalidation, TileCache } from './index.js';

export interface FollowOptions {
  /** Stops following when aborted. */
  signal?: AbortSignal;
  /** Sends `Authorization: Bearer <token>` (a fresh call per connection), as TileCache's
   * `auth` does; give the same object. The feed needs the same authentication as the
   * batch endpoint. */
  auth?: { token: () => string | Promise<string> };
  /** Extra request headers (an object or a `Headers`, as TileCache's `headers`). */
  headers?: Record<string, string> | Headers;
  /** The fetch to use; default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Resume after this event id (one a previous `follow` reached) instead of invalidating
   * everything on the first connection. One that cannot go back as `Last-Event-ID` (empty,
   * or other than visible ASCII: a CR or LF, a character past U+00FF) is refused:
   * `follow` throws a TypeError with code `ERR_INVALID_ARG_VALUE`. */
  lastEventId?: string;
  /** Called after each event was applied: `ready` (connected), `invalidate` or `reset` (a
   * reset within a second of the last invalidation of everything is reported when it
   * arrives and applied at the end of that second). */
  onEvent?: (event: FeedEvent) => void;
  /** Connection failures and bad events (following goes on): `ERR_NETWORK` for a
   * connection that failed or a body that could not be read (the error fetch gave is its
   * `cause`), `ERR_FEED` for an HTTP error status but 401 (the status is the error's
   * `status`) or a stream the server closed, `ERR_BAD_EVENT` for an
   * `invalidate` whose data is not an invalidation, or an event longer than 1 Mi characters
   * (skipped as it arrives, not kept; an `invalidate` one invalidates everything),
   * `ERR_UNAUTHORIZED` for a 401 from the feed (`status` 401) or an `auth.token()` that
   * rejected (its error the `cause`) or gave no bearer token (nothing is sent); tried again
   * with backoff, as TileCache's; an error
   * `onEvent` throws as it was thrown. The codes: js/README.md, *Errors*. One that
   * throws is reported (`reportError`, else `console.error`) and following goes on. */
  onError?: (error: unknown) => void;
  /** First reconnect delay, doubled per reconnect up to `maxRetryMs` (with jitter), and
   * back to `minRetryMs` once a connection has stayed up for 30 s (or `maxRetryMs`, when
   * less): a feed that ends each stream right after `ready` is not reconnected to in a
   * tight loop. A refusal's `Retry-After` (429, 503; at most an hour) is the least wait.
   * Defaults 500 and 30 000; 0 < `minRetryMs` <= `maxRetryMs` <= 2147483647 (setTimeout's
   * longest delay), else `follow` throws. */
  minRetryMs?: number;
  maxRetryMs?: number;
}

export interface FeedEvent {
  type: 'ready' | 'invalidate' | 'reset';
  /** The stream id (`<ms>-<seq>`) of the event. */
  id?: string;
  /** What was invalidated in the cache (`{all: true}` for `reset` and the first `ready`). */
  invalidation?: Invalidation;
}

export interface Following {
  /** The id of the last event read (an event of a kind the feed does not know counts too,
   * as an EventSource's last event id does): pass it as `lastEventId` to resume later.
   * `undefined` after an event whose id cannot be resumed from (empty, or other than
   * visible ASCII): the next connection then invalidates everything, as the first does. */
  readonly lastEventId: string | undefined;
  /** Resolves when following stopped: the signal aborted, or the cache was disposed
   * (`cache.onDispose`: the connection, the `auth.token()` it waits for, or the wait before
   * the next, is aborted at once). */
  readonly done: Promise<void>;
}

/**
 * Follows the server's change feed (`GET /v1/changes`, server-sent events): each change is
 * invalidated in `cache` (visible tiles are fetched again and `onUpdate` fires); `reset`
 * invalidates everything (at most once a second: resets within a second of the last are
 * applied once at its end, as the view is fetched again each time); a dropped connection
 * resumes with `Last-Event-ID`. The server
 * filters the feed by the connection's verified tier, so a change of the cache's tier
 * (`cache.onAccess`) makes the connection again at once with a fresh `auth.token()`,
 * resuming after the last event applied; events of the old connection are not applied.
 * Throws a TypeError or RangeError with a `code` for bad arguments: an option of another
 * name or of the wrong type, retry delays out of range, a `lastEventId` that cannot be
 * sent back.
 * @example
 * const cache = await TileCache.create({ endpoint: 'https://api.example/v1/batch', auth });
 * follow(cache, 'https://api.example/v1/changes', { auth, signal });
 */
export function follow(cache: TileCache<any>, url: string, options?: FollowOptions): Following;
