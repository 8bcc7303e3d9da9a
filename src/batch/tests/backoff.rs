use crate::batch::backoff::Backoff;
use crate::tile::TileId;

fn t(x: u32) -> TileId {
    TileId::new(14, x, 100).unwrap()
}

#[test]
fn delays_double_per_failure_within_their_jitter_window_and_stop_at_the_max() {
    let mut b = Backoff::new(100, 1000, 42);
    for _ in 0..200 {
        for (failures, d) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let got = b.delay(failures, None);
            assert!(
                (d / 2..=d).contains(&got),
                "{failures}: {got} not in [{}, {d}]",
                d / 2
            );
        }
    }
    // A Retry-After longer than the backoff wins (capped at an hour).
    assert_eq!(b.delay(1, Some(7000)), 7000);
    assert_eq!(b.delay(1, Some(u64::MAX)), 3_600_000);
}

#[test]
fn the_same_seed_draws_the_same_delays() {
    let (mut a, mut b) = (Backoff::new(100, 60_000, 9), Backoff::new(100, 60_000, 9));
    let da: Vec<u64> = (1..20).map(|f| a.delay(f, None)).collect();
    let db: Vec<u64> = (1..20).map(|f| b.delay(f, None)).collect();
    assert_eq!(da, db);
    let mut c = Backoff::new(100, 60_000, 10);
    let dc: Vec<u64> = (1..20).map(|f| c.delay(f, None)).collect();
    assert_ne!(da, dc);
}

#[test]
fn held_back_tiles_wait_and_their_streak_grows_until_forgotten() {
    let mut b = Backoff::new(100, 10_000, 1);
    assert!(b.ready(t(0), 0) && b.get(t(0)).is_none());
    let at = b.hold_back(&[t(0), t(1)], 1, 0, None, 1000);
    assert!((1050..=1100).contains(&at), "{at}");
    for tile in [t(0), t(1)] {
        let e = b.get(tile).unwrap();
        assert_eq!((e.attempt, e.failures, e.not_before_ms), (1, 1, at));
        assert!(!b.ready(tile, at - 1) && b.ready(tile, at));
    }
    // The exponent is one more than the most failures of any of the tiles.
    let at2 = b.hold_back(&[t(1), t(2)], 0, 0, None, at);
    assert!((at + 100..=at + 200).contains(&at2), "{at2}");
    assert_eq!(b.get(t(2)).unwrap().failures, 2);
    // `at_least` is a floor on it.
    let at3 = b.hold_back(&[t(3)], 0, 5, None, 0);
    assert!((800..=1600).contains(&at3), "{at3}");
    b.forget(t(1));
    assert!(b.get(t(1)).is_none() && b.ready(t(1), 0));
    assert!(b.get(t(2)).is_some());
}
