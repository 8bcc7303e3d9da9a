//! [`ProtocolError`]: why a body could not be decoded, and the helpers that quote input
//! in its messages.

use super::ErrorCode;
use crate::access::UnknownAccess;
use crate::tile::{TileId, MAX_ZOOM};
use crate::util::Quoted;

/// How many characters of offending input an error message quotes.
const QUOTE_CHARS: usize = 64;

/// Why a body could not be decoded. Every message names the field and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The body is longer than [`Limits::max_body_bytes`](super::Limits::max_body_bytes); nothing was parsed.
    #[error("body is {size} bytes, at most {max} are allowed")]
    BodyTooLarge { size: usize, max: usize },
    /// The body is not JSON of the expected shape (syntax, a wrong type, a missing or
    /// duplicated field). `message` is serde_json's, without the position.
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// A list has more entries than allowed. `what` is `"<container> <entries>"`, e.g.
    /// `"request tiles"`, and the message reads "request has 80 tiles, ...".
    #[error("{}", too_many_message(what, *count, *max))]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    /// `tiles[index]` is not a `z/x/y` tile. `input` is the text (cut to 64 characters).
    #[error("tiles[{index}] {}: {reason}", Quoted(input))]
    InvalidTile {
        index: usize,
        input: String,
        reason: String,
    },
    /// A requested tile is coarser than [`Limits::min_zoom`](super::Limits::min_zoom).
    #[error(
        "tiles[{index}] \"{tile}\": zoom {} is too coarse, zoom must be in {min_zoom}..={MAX_ZOOM}",
        tile.z()
    )]
    ZoomTooLow {
        index: usize,
        tile: TileId,
        min_zoom: u8,
    },
    /// Request `ids[index]` is not a valid id.
    #[error("ids[{index}]: {reason}")]
    InvalidId { index: usize, reason: String },
    /// Response `items[index]` is invalid. `id` is the item's id (cut to 64 characters).
    #[error("items[{index}] ({}): {reason}", Quoted(id))]
    InvalidItem {
        index: usize,
        id: String,
        reason: String,
    },
    /// An item's fields are invalid, from [`validate_item_fields`](super::validate_item_fields), which does not know the
    /// item's position; [`ProtocolError::at_item`] turns it into [`InvalidItem`].
    ///
    /// [`InvalidItem`]: ProtocolError::InvalidItem
    #[error("item {}: {reason}", Quoted(id))]
    InvalidItemFields { id: String, reason: String },
    /// Response `tiles[index]` (a tile list) is invalid.
    #[error("tiles[{index}] \"{tile}\": {reason}")]
    InvalidTileList {
        index: usize,
        tile: TileId,
        reason: String,
    },
    /// Response `missing[index]` is invalid.
    #[error("missing[{index}]: {reason}")]
    InvalidMissing { index: usize, reason: String },
    /// The request's `access` is not a known tier.
    #[error("access: {0}")]
    UnknownAccess(#[from] UnknownAccess),
    /// A request with no tiles and no ids.
    #[error("request has no tiles and no ids: at least one tile or one id is required")]
    EmptyRequest,
    /// An invalidation `classes[index]` is not a valid class.
    #[error("classes[{index}]: {reason}")]
    InvalidClass { index: usize, reason: String },
    /// An invalidation that covers nothing.
    #[error("invalidation covers nothing: give ids, tiles, classes, or \"all\": true")]
    EmptyInvalidation,
    /// A change stream id that is not `<ms>-<seq>`.
    #[error(
        "stream id {}: must be <milliseconds>-<sequence>, two whole numbers",
        Quoted(input)
    )]
    InvalidStreamId { input: String },
}

impl ProtocolError {
    /// The error code a server answers with: [`ErrorCode::PayloadTooLarge`] for
    /// [`BodyTooLarge`](ProtocolError::BodyTooLarge), [`ErrorCode::BadRequest`] for the
    /// rest. (A client that fails to decode a *response* should report it as an upstream
    /// problem rather than use this code.)
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::BodyTooLarge { .. } => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::BadRequest,
        }
    }

    /// Attaches an item's position to an [`InvalidItemFields`] error, making it
    /// [`InvalidItem`]; any other error is returned unchanged.
    ///
    /// ```
    /// use tilewarm::protocol::{validate_item_fields, Limits, ProtocolError};
    /// let e = validate_item_fields("abc", 0.0, 123.4, "sold", None, &Limits::default())
    ///     .unwrap_err()
    ///     .at_item(3);
    /// assert_eq!(e.to_string(), r#"items[3] ("abc"): lat must be in -90..=90, got 123.4"#);
    /// ```
    ///
    /// [`InvalidItemFields`]: ProtocolError::InvalidItemFields
    /// [`InvalidItem`]: ProtocolError::InvalidItem
    pub fn at_item(self, index: usize) -> ProtocolError {
        match self {
            ProtocolError::InvalidItemFields { id, reason } => {
                ProtocolError::InvalidItem { index, id, reason }
            }
            other => other,
        }
    }
}

fn too_many_message(what: &str, count: usize, max: usize) -> String {
    let (owner, entries) = what.rsplit_once(' ').unwrap_or(("list", what));
    format!("{owner} has {count} {entries}, at most {max} are allowed")
}

/// The first [`QUOTE_CHARS`] characters of `s`, with `…` when cut.
pub(super) fn clip(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// `s` clipped and quoted with escapes, for messages.
pub(super) fn quote(s: &str) -> String {
    Quoted(&clip(s)).to_string()
}
