// The test pages' clock: the page's own, which a test moves on to make items expire.

/**
 * A clock for a test page's caches (`now`, their `now` option) that `skip(ms)` moves on.
 * `busy()` tells whether a cache has a request out: the move waits until none has, as a
 * request out across it would be overdue at the cache's next tick and fail as timed out
 * (`batch.timeoutMs` is measured on this clock). A CI run failed so: a read started
 * between a test's wait for the page to settle and its skip.
 */
export function testClock(busy) {
  let skew = 0;
  return {
    now: () => Date.now() + skew,
    /** Resolves once the clock moved on by `ms`. What the caller does on resolution runs
     * before any timer or answer of the page, so before any new request goes out. */
    skip: (ms) => new Promise((moved) => {
      const tryNow = () => {
        if (busy()) return setTimeout(tryNow, 10);
        skew += ms;
        moved();
      };
      tryNow();
    }),
  };
}
