//! Invalidation on the wire: what `POST /v1/invalidate` takes, what the change feed
//! (`GET /v1/changes`) carries, and the feed's event ids. One type, [`Invalidation`], for the
//! server, the edge and the package.
//!
//! ```text
//! POST /v1/invalidate  {"ids": ["a"], "tiles": ["14/2624/5721"], "classes": ["sold"], "all": false}
//! GET  /v1/changes     event: invalidate \n id: 1764700000000-0 \n data: {"ids":["a"],"tiles":[],"classes":[],"all":false}
//! ```
//!
//! - `ids`, `tiles` (`z/x/y`, any zoom 0..=24: a coarse tile covers every data tile in it)
//!   and `classes` may be absent or `null` (= empty); `all` may be absent or `null`
//!   (= `false`). An invalidation that covers nothing is an error.
//! - Bounds, enforced while parsing like the batch request's: at most
//!   [`Limits::max_ids`] ids, [`Limits::max_tiles`] tiles and [`MAX_CLASSES`] classes, the
//!   body at most [`Limits::max_request_bytes`]. Ids and classes follow the batch
//!   protocol's rules (module docs of [`super`]). Unknown fields are ignored; a field given
//!   twice is an error.
//! - A feed event's id is a [`StreamId`], `<milliseconds>-<sequence>` (a Redis Stream
//!   entry id), ordered numerically.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::decode::{bounded, parse, set_once, Slot};
use super::validate::check_class;
use super::{check_body, check_id, clip, dedup, parse_tiles, Limits, ProtocolError};
use crate::tile::TileId;

/// Most classes in one invalidation.
pub const MAX_CLASSES: usize = 64;

/// What to invalidate. Empty fields cover nothing; `all` covers everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Invalidation {
    /// Items by id; a tile list naming one is then incomplete and refetched.
    pub ids: Vec<String>,
    /// Tiles at any zoom: a finer tile stands for its data-zoom ancestor, a coarser one for
    /// every data tile inside it. Their lists and the items they list are dropped.
    pub tiles: Vec<TileId>,
    /// Every item of these classes.
    pub classes: Vec<String>,
    /// Everything.
    pub all: bool,
}

impl Invalidation {
    /// Everything.
    pub fn everything() -> Invalidation {
        Invalidation {
            all: true,
            ..Invalidation::default()
        }
    }

    /// Whether it covers nothing.
    pub fn is_empty(&self) -> bool {
        !self.all && self.ids.is_empty() && self.tiles.is_empty() && self.classes.is_empty()
    }

    /// Adds `other` to this one.
    pub fn merge(&mut self, other: Invalidation) {
        self.all |= other.all;
        self.ids.extend(other.ids);
        self.tiles.extend(other.tiles);
        self.classes.extend(other.classes);
    }

    /// Sorts and removes repeats (fewer keys to delete).
    pub fn dedup(&mut self) {
        self.ids.sort_unstable();
        self.ids.dedup();
        self.tiles.sort_unstable();
        self.tiles.dedup();
        self.classes.sort_unstable();
        self.classes.dedup();
    }

    /// The same change as invalidations within `limits`' counts (`max_ids`, `max_tiles`,
    /// and [`MAX_CLASSES`]), so that a reader decoding each with those limits takes every
    /// one: one invalidation when it fits (or covers everything), else as many as its
    /// longest list needs. A merged burst of changes may be longer than any one decoder
    /// allows.
    ///
    /// When the change names ids, so does every part (a part past the last run of ids
    /// names the first id again, which costs a repeated delete): a part is never tiles or
    /// classes alone, so a feed follower below the top tier, which gets a part naming ids
    /// as a `reset` (the ids, and tiles that came with them, as the positions of changed
    /// rows, may be of items above its tier), never sees such a part's tiles.
    ///
    /// ```
    /// use tilewarm::protocol::{Invalidation, Limits};
    /// let limits = Limits { max_ids: 2, max_tiles: 1, ..Limits::default() };
    /// let ids: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    /// let parts = Invalidation { ids, ..Invalidation::default() }.split(&limits);
    /// assert_eq!(parts.len(), 2);
    /// assert_eq!((parts[0].ids.len(), parts[1].ids.len()), (2, 1));
    /// // Three tiles: three parts, each naming an id.
    /// let tiles = ["14/1/1", "14/1/2", "14/1/3"].map(|t| t.parse().unwrap()).to_vec();
    /// let parts = Invalidation { ids: vec!["a".into()], tiles, ..Invalidation::default() }
    ///     .split(&limits);
    /// assert_eq!(parts.len(), 3);
    /// assert!(parts.iter().all(|p| p.ids == ["a"] && p.tiles.len() == 1));
    /// ```
    pub fn split(&self, limits: &Limits) -> Vec<Invalidation> {
        if self.all {
            return vec![Invalidation::everything()];
        }
        let (ids, tiles) = (limits.max_ids.max(1), limits.max_tiles.max(1));
        let parts = [
            self.ids.len().div_ceil(ids),
            self.tiles.len().div_ceil(tiles),
            self.classes.len().div_ceil(MAX_CLASSES),
        ];
        // The i-th run of at most `n` entries of `list` (empty past its end).
        fn run<T: Clone>(list: &[T], n: usize, i: usize) -> Vec<T> {
            list.chunks(n).nth(i).unwrap_or_default().to_vec()
        }
        (0..parts.into_iter().max().unwrap_or(0).max(1))
            .map(|i| {
                let mut part_ids = run(&self.ids, ids, i);
                if part_ids.is_empty() {
                    part_ids.extend(self.ids.first().cloned());
                }
                Invalidation {
                    ids: part_ids,
                    tiles: run(&self.tiles, tiles, i),
                    classes: run(&self.classes, MAX_CLASSES, i),
                    all: false,
                }
            })
            .collect()
    }

    /// Whether a data tile's list is covered (`all`, or a tile containing it or inside it).
    pub fn covers_tile(&self, data_tile: TileId) -> bool {
        self.all
            || self
                .tiles
                .iter()
                .any(|&t| t.contains(data_tile) || data_tile.contains(t))
    }

    /// The wire form, every field present.
    ///
    /// ```
    /// use tilewarm::protocol::Invalidation;
    /// let i = Invalidation { ids: vec!["a".into()], ..Invalidation::default() };
    /// assert_eq!(i.to_json(), r#"{"ids":["a"],"tiles":[],"classes":[],"all":false}"#);
    /// ```
    pub fn to_json(&self) -> String {
        // Strings, tiles and a bool always serialise.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks what [`decode_invalidation`] checks after parsing: counts, ids, classes,
    /// not empty.
    pub fn validate(&self, limits: &Limits) -> Result<(), ProtocolError> {
        let counts = [
            ("invalidation ids", self.ids.len(), limits.max_ids),
            ("invalidation tiles", self.tiles.len(), limits.max_tiles),
            ("invalidation classes", self.classes.len(), MAX_CLASSES),
        ];
        for (what, count, max) in counts {
            if count > max {
                return Err(ProtocolError::TooMany { what, count, max });
            }
        }
        if self.is_empty() {
            return Err(ProtocolError::EmptyInvalidation);
        }
        for (index, id) in self.ids.iter().enumerate() {
            check_id(id, limits).map_err(|reason| ProtocolError::InvalidId { index, reason })?;
        }
        for (index, class) in self.classes.iter().enumerate() {
            check_class(class, limits)
                .map_err(|reason| ProtocolError::InvalidClass { index, reason })?;
        }
        Ok(())
    }
}

/// Decodes and checks an invalidation body (`POST /v1/invalidate`, and a feed event's
/// data). Repeats are removed, keeping the first of each.
///
/// ```
/// use tilewarm::protocol::{decode_invalidation, Limits};
/// let l = Limits::default();
/// let i = decode_invalidation(br#"{"ids":["a","a"],"tiles":["10/163/357"]}"#, &l).unwrap();
/// assert_eq!((i.ids.len(), i.tiles.len(), i.all), (1, 1, false));
/// let e = decode_invalidation(br#"{"all":false}"#, &l).unwrap_err();
/// assert_eq!(e.to_string(), r#"invalidation covers nothing: give ids, tiles, classes, or "all": true"#);
/// let e = decode_invalidation(br#"{"classes":["Sold"]}"#, &l).unwrap_err();
/// assert_eq!(e.to_string(), r#"classes[0]: class "Sold" contains 'S'; allowed are a-z, 0-9, '_' and '-'"#);
/// ```
pub fn decode_invalidation(body: &[u8], limits: &Limits) -> Result<Invalidation, ProtocolError> {
    let limits = &Limits {
        max_body_bytes: limits.max_body_bytes.min(limits.max_request_bytes()),
        ..*limits
    };
    check_body(body, limits)?;
    let slot = Slot::default();
    let wire = parse(
        body,
        InvalidationSeed {
            limits,
            slot: &slot,
        },
        &slot,
    )?;
    let tiles = parse_tiles(&wire.tiles)?;
    let mut inv = Invalidation {
        ids: wire.ids,
        tiles,
        classes: wire.classes,
        all: wire.all,
    };
    inv.validate(limits)?;
    dedup(&mut inv.ids);
    dedup(&mut inv.tiles);
    dedup(&mut inv.classes);
    Ok(inv)
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Ids,
    Tiles,
    Classes,
    All,
    #[serde(other)]
    Other,
}

struct WireInvalidation {
    ids: Vec<String>,
    tiles: Vec<String>,
    classes: Vec<String>,
    all: bool,
}

struct InvalidationSeed<'a> {
    limits: &'a Limits,
    slot: &'a Slot,
}

impl<'de> DeserializeSeed<'de> for InvalidationSeed<'_> {
    type Value = WireInvalidation;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<WireInvalidation, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for InvalidationSeed<'_> {
    type Value = WireInvalidation;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an invalidation object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireInvalidation, A::Error> {
        let (mut ids, mut tiles, mut classes, mut all) = (None, None, None, None);
        let Self { limits, slot } = self;
        while let Some(key) = map.next_key()? {
            match key {
                Field::Ids => {
                    let seed = bounded::<String>("invalidation ids", limits.max_ids, slot);
                    set_once(&mut ids, "ids", map.next_value_seed(seed)?)?
                }
                Field::Tiles => {
                    let seed = bounded::<String>("invalidation tiles", limits.max_tiles, slot);
                    set_once(&mut tiles, "tiles", map.next_value_seed(seed)?)?
                }
                Field::Classes => {
                    let seed = bounded::<String>("invalidation classes", MAX_CLASSES, slot);
                    set_once(&mut classes, "classes", map.next_value_seed(seed)?)?
                }
                Field::All => set_once(&mut all, "all", map.next_value::<Option<bool>>()?)?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(WireInvalidation {
            ids: ids.unwrap_or_default(),
            tiles: tiles.unwrap_or_default(),
            classes: classes.unwrap_or_default(),
            all: all.flatten().unwrap_or(false),
        })
    }
}

/// A change feed event id: `<milliseconds>-<sequence>`, as Redis Stream entry ids are
/// written; ordered by milliseconds, then sequence. `0-0` is before every event.
///
/// ```
/// use tilewarm::protocol::StreamId;
/// let a: StreamId = "1764700000000-2".parse().unwrap();
/// assert!(a < "1764700000000-10".parse().unwrap());
/// assert_eq!(a.to_string(), "1764700000000-2");
/// assert_eq!("17".parse::<StreamId>().unwrap().to_string(), "17-0");
/// assert!("1-x".parse::<StreamId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// Before every event.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// The id right after this one.
    pub fn next(self) -> StreamId {
        match self.seq.checked_add(1) {
            Some(seq) => StreamId { ms: self.ms, seq },
            None => StreamId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = ProtocolError;
    /// `<ms>-<seq>`, or `<ms>` alone (sequence 0). Digits only, each part a `u64`.
    fn from_str(s: &str) -> Result<StreamId, ProtocolError> {
        let bad = || ProtocolError::InvalidStreamId { input: clip(s) };
        let number = |p: &str| {
            if p.is_empty() || p.len() > 20 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u64>().map_err(|_| bad())
        };
        let (ms, seq) = match s.split_once('-') {
            Some((ms, seq)) => (number(ms)?, number(seq)?),
            None => (number(s)?, 0),
        };
        Ok(StreamId { ms, seq })
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StreamId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_errors() {
        let l = Limits {
            max_ids: 2,
            max_tiles: 1,
            ..Limits::default()
        };
        let e = decode_invalidation(br#"{"ids":["a","b","c"]}"#, &l).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalidation has 3 ids, at most 2 are allowed"
        );
        let e = decode_invalidation(br#"{"tiles":["1/0/0","1/1/0"]}"#, &l).unwrap_err();
        assert!(matches!(e, ProtocolError::TooMany { count: 2, .. }), "{e}");
        let many: Vec<String> = (0..=MAX_CLASSES).map(|i| format!("\"c{i}\"")).collect();
        let body = format!("{{\"classes\":[{}]}}", many.join(","));
        let e = decode_invalidation(body.as_bytes(), &l).unwrap_err();
        assert!(
            e.to_string().starts_with("invalidation has 65 classes"),
            "{e}"
        );
        let e = decode_invalidation(br#"{"tiles":["1/5/0"]}"#, &l).unwrap_err();
        assert!(e.to_string().starts_with("tiles[0] \"1/5/0\""), "{e}");
        let e = decode_invalidation(br#"{"ids":[""]}"#, &l).unwrap_err();
        assert_eq!(e.to_string(), "ids[0]: id must not be empty");
        let e = decode_invalidation(br#"{"all":true,"all":true}"#, &l).unwrap_err();
        assert!(e.to_string().contains("duplicate field `all`"), "{e}");
        let e = decode_invalidation(br#"{"all":1}"#, &l).unwrap_err();
        assert!(matches!(e, ProtocolError::Json { .. }), "{e}");
        let e = decode_invalidation(b"[]", &l).unwrap_err();
        assert!(matches!(e, ProtocolError::Json { .. }), "{e}");
        let big = vec![b' '; l.max_request_bytes() + 1];
        let e = decode_invalidation(&big, &l).unwrap_err();
        assert!(matches!(e, ProtocolError::BodyTooLarge { .. }), "{e}");
        // Nulls, unknown fields and `all` alone.
        let i = decode_invalidation(br#"{"ids":null,"x":{"y":[1]},"all":true}"#, &l).unwrap();
        assert_eq!(i, Invalidation::everything());
    }

    #[test]
    fn round_trip() {
        let l = Limits::default();
        let i = Invalidation {
            ids: vec!["a".into(), "b\"c".into()],
            tiles: vec!["3/1/2".parse().unwrap()],
            classes: vec!["sold".into()],
            all: false,
        };
        assert_eq!(decode_invalidation(i.to_json().as_bytes(), &l).unwrap(), i);
    }

    #[test]
    fn coverage() {
        let t: TileId = "14/2624/5721".parse().unwrap();
        let i = Invalidation {
            tiles: vec![t.ancestor(10).unwrap()],
            ..Invalidation::default()
        };
        assert!(i.covers_tile(t));
        assert!(!i.covers_tile(t.ancestor(10).unwrap().offset(1, 0).unwrap()));
        assert!(Invalidation::everything().covers_tile(t));
        let mut m = Invalidation::default();
        assert!(m.is_empty());
        m.merge(i.clone());
        m.merge(i);
        m.dedup();
        assert_eq!(m.tiles.len(), 1);
    }

    #[test]
    fn stream_ids() {
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "+1-0",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad:?}");
        }
        let m = StreamId {
            ms: 5,
            seq: u64::MAX,
        };
        assert_eq!(m.next(), StreamId { ms: 6, seq: 0 });
        assert!(StreamId::ZERO < m);
    }
}
