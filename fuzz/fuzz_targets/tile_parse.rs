//! The tile parsers: `TileId::from_str` (`z/x/y`), `TileId::from_quadkey` and
//! `TileId::from_u64` on arbitrary input.
//!
//! Properties, beyond not panicking:
//! - a parsed tile exists (z <= 24, x and y below 2^z); Display(parse(s)) parses to the
//!   same tile, and equals `s` when `s` has no leading zeros; the tile round-trips through
//!   its quadkey, its packed u64 and serde;
//! - parent/children/ancestor agree: the tile is among its parent's children, and
//!   its zoom-0 ancestor is the root;
//! - a quadkey or packed id that parses is the tile's own canonical form;
//! - a refusal's message quotes at most 64 characters of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tilewarm::tile::{tiles_per_axis, TileId, MAX_ZOOM};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        match s.parse::<TileId>() {
            Ok(t) => {
                check_tile(t);
                let shown = t.to_string();
                assert_eq!(shown.parse::<TileId>().ok(), Some(t), "{s:?} -> {shown}");
                let canonical = s
                    .split('/')
                    .all(|part| part == "0" || !part.starts_with('0'));
                if canonical {
                    assert_eq!(shown, s);
                }
            }
            Err(e) => assert!(e.to_string().chars().count() < 64 * 10 + 200, "{e}"),
        }
        if let Ok(t) = TileId::from_quadkey(s) {
            check_tile(t);
            assert_eq!(t.quadkey(), s);
        }
        if let Ok(t) = serde_json::from_str::<TileId>(s) {
            check_tile(t);
        }
    }
    if let Some(bytes) = data.get(..8) {
        let v = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
        if let Ok(t) = TileId::from_u64(v) {
            check_tile(t);
            assert_eq!(t.to_u64(), v);
        }
    }
});

fn check_tile(t: TileId) {
    assert!(t.z() <= MAX_ZOOM);
    let n = tiles_per_axis(t.z());
    assert!(t.x() < n && t.y() < n, "{t}");
    assert_eq!(TileId::new(t.z(), t.x(), t.y()).ok(), Some(t));
    assert_eq!(TileId::from_quadkey(&t.quadkey()).ok(), Some(t));
    assert_eq!(t.quadkey().len(), t.z() as usize);
    assert_eq!(TileId::from_u64(t.to_u64()).ok(), Some(t));
    assert!(t.to_u64() < 1 << 53);
    let json = serde_json::to_string(&t).expect("a tile serialises");
    assert_eq!(serde_json::from_str::<TileId>(&json).ok(), Some(t));
    match t.parent() {
        Some(p) => {
            assert_eq!(p.z() + 1, t.z());
            assert!(p.children().is_some_and(|c| c.contains(&t)));
            assert!(p.contains(t));
        }
        None => assert_eq!(t, TileId::ROOT),
    }
    assert_eq!(t.ancestor(0).ok(), Some(TileId::ROOT));
    assert_eq!(t.ancestor(t.z()).ok(), Some(t));
    if let Some(children) = t.children() {
        for c in children {
            assert_eq!(c.parent(), Some(t));
        }
    } else {
        assert_eq!(t.z(), MAX_ZOOM);
    }
}
