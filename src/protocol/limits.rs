//! How much a decoder reads: [`Limits`].

/// Size limits for decoding. Every field has a documented default ([`Limits::default`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted, in bytes. Default 8 MiB.
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
    /// Longest ttl, in seconds. Default 30 days (2 592 000).
    pub max_ttl_s: u32,
    /// Coarsest zoom a request may ask for (the finest is always 24). Default 0.
    pub min_zoom: u8,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 8 * 1024 * 1024,
            max_tiles: 64,
            max_ids: 1000,
            max_items: 50_000,
            max_id_len: 256,
            max_class_len: 64,
            max_ttl_s: 30 * 24 * 60 * 60,
            min_zoom: 0,
        }
    }
}
