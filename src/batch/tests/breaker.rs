use crate::batch::breaker::Breaker;
use crate::batch::RequestId;

#[test]
fn opens_after_the_threshold_and_lets_one_probe_through_after_the_cooldown() {
    let mut b = Breaker::new(3, 1000, 8000);
    assert!(!b.is_open() && b.allows_prefetch(0));
    assert!(!b.on_failure(0));
    assert!(!b.on_failure(0));
    assert!(b.allows_prefetch(0), "two failures of three: still closed");
    assert!(b.on_failure(10), "the third failure opens it");
    assert!(b.is_open());
    assert_eq!(b.reopens_at_ms(), Some(1010));
    assert!(!b.allows_prefetch(1009));
    // Cool-down over: half-open, one probe.
    assert!(b.allows_prefetch(1010));
    assert_eq!(b.reopens_at_ms(), None);
    b.sent_prefetch(RequestId(7));
    assert!(!b.allows_prefetch(1010), "only one probe at a time");
    assert!(b.is_open());
    // Another request ending does not free the probe slot; the probe's does.
    b.ended(RequestId(6));
    assert!(!b.allows_prefetch(1010));
    b.ended(RequestId(7));
    assert!(b.allows_prefetch(1010));
}

#[test]
fn a_failed_probe_doubles_the_cooldown_up_to_the_max_and_an_answer_resets_it() {
    let mut b = Breaker::new(1, 1000, 3000);
    assert!(b.on_failure(0));
    let mut now = 1000;
    for want in [2000, 3000, 3000] {
        assert!(b.allows_prefetch(now));
        b.sent_prefetch(RequestId(now));
        b.ended(RequestId(now));
        assert!(!b.on_failure(now), "reopening is not a new opening");
        assert_eq!(b.reopens_at_ms(), Some(now + want));
        now += want;
    }
    assert!(b.allows_prefetch(now));
    b.on_success();
    assert!(!b.is_open() && b.allows_prefetch(now));
    // Closed again: the next opening waits the base cool-down.
    assert!(b.on_failure(now));
    assert_eq!(b.reopens_at_ms(), Some(now + 1000));
}

#[test]
fn an_answer_resets_the_streak() {
    let mut b = Breaker::new(2, 1000, 1000);
    assert!(!b.on_failure(0));
    b.on_success();
    assert!(!b.on_failure(0), "the streak started again");
    assert!(b.on_failure(0));
}
