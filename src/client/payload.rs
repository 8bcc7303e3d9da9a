//! What the client stores as an item's payload.

/// An item payload as the client stores it: it only needs to know its size, for the
/// cache's byte budget. The wasm shell implements it for a JS handle with the size of the
/// item's JSON; natively the raw JSON text is the payload.
pub trait Payload {
    /// Bytes this payload occupies (an estimate is fine; it must not change while cached).
    fn size_bytes(&self) -> usize;
}

impl Payload for Box<serde_json::value::RawValue> {
    fn size_bytes(&self) -> usize {
        self.get().len()
    }
}

impl Payload for Vec<u8> {
    fn size_bytes(&self) -> usize {
        self.len()
    }
}

impl Payload for String {
    fn size_bytes(&self) -> usize {
        self.len()
    }
}

impl Payload for () {
    fn size_bytes(&self) -> usize {
        0
    }
}
