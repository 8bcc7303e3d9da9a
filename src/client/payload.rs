//! What the client stores as an item's payload, and what an answer delivers it as.

/// An item payload as the client stores it: it only needs to know its size, for the
/// cache's byte budget. Natively the raw JSON text is the payload. Every `Payload` is also
/// the [`Received`] form of itself, which is how an answer hands it to the client.
pub trait Payload {
    /// Bytes this payload occupies (an estimate is fine; it must not change while cached).
    fn size_bytes(&self) -> usize;
}

/// An item payload as an answer delivers it ([`Client::on_response`]): its size, read
/// once when the item is cached (what the cache's byte budget charges it beside its id and
/// class), and the payload `P` the cache then holds. A payload that knows its own size
/// ([`Payload`]) is its own `Received` form; one that does not can arrive beside its size,
/// so the cache does not hold the size in every item: the browser's payload is the slot of
/// a JS object (4 bytes on wasm32), and its size would double it.
///
/// [`Client::on_response`]: super::Client::on_response
pub trait Received<P> {
    /// Bytes the payload occupies, as [`Payload::size_bytes`].
    fn size_bytes(&self) -> usize;
    /// The payload the cache holds.
    fn into_payload(self) -> P;
}

impl<P: Payload> Received<P> for P {
    fn size_bytes(&self) -> usize {
        Payload::size_bytes(self)
    }
    fn into_payload(self) -> P {
        self
    }
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
