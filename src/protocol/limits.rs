//! How much a decoder reads: [`Limits`].

/// Size limits for decoding. Every field has a documented default ([`Limits::default`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted, in bytes. Default 8 MiB: what a client reads of a response.
    /// A server reading requests uses [`Limits::max_request_bytes`] instead.
    pub max_body_bytes: usize,
    /// Most tiles in a request (and tile lists in a response). Default 64.
    pub max_tiles: usize,
    /// Most ids in a request (and entries in a response's `missing`). Default 1000.
    pub max_ids: usize,
    /// Most items in a response (and ids in one tile list). Default 50 000.
    pub max_items: usize,
    /// Longest id, in bytes. Default 256.
    pub max_id_len: usize,
    /// Longest item class, in bytes. Default 64.
    pub max_class_len: usize,
    /// Longest ttl, in seconds. Default 30 days ([`MAX_TTL_S`]).
    pub max_ttl_s: u32,
    /// Largest item `data`, in bytes of its JSON text. Default 64 KiB (65 536). Not a
    /// decoding error: a layer reading an origin's answer leaves such an item out with
    /// [`BatchResponse::take_oversized`](super::BatchResponse::take_oversized) (the rest of
    /// the answer is kept), so it is neither cached nor served.
    pub max_data_bytes: usize,
    /// Coarsest zoom a request may ask for (the finest is always 24). Default 0.
    pub min_zoom: u8,
}

/// The longest `ttl` a client accepts by default, in seconds: 30 days (2 592 000), the
/// default of [`Limits::max_ttl_s`]. A layer answering from its cache never writes a longer
/// one ([`ttl_left_s`](super::ttl_left_s)).
pub const MAX_TTL_S: u32 = 30 * 24 * 60 * 60;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 8 * 1024 * 1024,
            max_tiles: 64,
            max_ids: 1000,
            max_items: 50_000,
            max_id_len: 256,
            max_class_len: 64,
            max_ttl_s: MAX_TTL_S,
            max_data_bytes: 64 * 1024,
            min_zoom: 0,
        }
    }
}

/// The longest tile name: `"24/16777215/16777215"` without the quotes.
const MAX_TILE_NAME_BYTES: usize = 20;

/// Room per list element for the whitespace of pretty-printed JSON.
const PER_ELEMENT_SLACK: usize = 8;

/// Room for the object's keys, the tier and a few unknown fields or whitespace.
const REQUEST_SLACK: usize = 4096;

impl Limits {
    /// The largest request body these limits can accept, in bytes: `max_tiles` tiles of
    /// the longest name and `max_ids` ids of `max_id_len` bytes each written with every
    /// byte escaped (`\"` or `\\`, 2 bytes), each with quotes, a comma and
    /// `PER_ELEMENT_SLACK` bytes of whitespace, plus `REQUEST_SLACK`. A server reads at
    /// most this much of a request (about 517 KiB at the defaults, not 8 MiB).
    ///
    /// ```
    /// use tilewarm::protocol::Limits;
    /// assert!(Limits::default().max_request_bytes() < 600 * 1024);
    /// ```
    pub fn max_request_bytes(&self) -> usize {
        let tile = MAX_TILE_NAME_BYTES + 3 + PER_ELEMENT_SLACK;
        let id = self
            .max_id_len
            .saturating_mul(2)
            .saturating_add(3 + PER_ELEMENT_SLACK);
        self.max_tiles
            .saturating_mul(tile)
            .saturating_add(self.max_ids.saturating_mul(id))
            .saturating_add(REQUEST_SLACK)
    }
}
