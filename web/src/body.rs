//! An answer's body, read with a cap: a hostile or broken backend cannot make the page
//! buffer without end (as the npm package's `readBody` in `js/cache.js`).

use gloo_net::http::Response;
use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::ReadableStreamDefaultReader;

use tilewarm::batch::Failure;

use crate::auth::show;

/// The body of `res`, at most `max` bytes. A declared `content-length` above `max` is
/// refused before anything is read; a body without one is read a chunk at a time and given
/// up (the stream cancelled) once it passes `max`. Too large is [`Failure::Invalid`]; a
/// read that fails is [`Failure::Network`].
pub(crate) async fn read_body(res: &Response, max: usize) -> Result<Vec<u8>, Failure> {
    let too_large = || Failure::Invalid(format!("the body is larger than {max} bytes"));
    let declared = res.headers().get("content-length");
    if declared
        .and_then(|n| n.trim().parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
    {
        return Err(too_large());
    }
    let Some(stream) = res.body() else {
        return Ok(Vec::new());
    };
    let reader: ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    let failed = |e: JsValue| Failure::Network(show(&e));
    let mut body = Vec::new();
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(failed)?;
        let done = Reflect::get(&chunk, &JsValue::from_str("done")).map_err(failed)?;
        if done.as_bool() != Some(false) {
            return Ok(body);
        }
        let value = Reflect::get(&chunk, &JsValue::from_str("value")).map_err(failed)?;
        let Some(bytes) = value.dyn_ref::<Uint8Array>() else {
            return Err(Failure::Network(
                "the body's stream gave something not bytes".into(),
            ));
        };
        let len = bytes.length() as usize;
        if body.len() + len > max {
            // Nothing waits on the cancel: the answer is refused either way.
            let _ = reader.cancel();
            return Err(too_large());
        }
        let start = body.len();
        body.resize(start + len, 0);
        bytes.copy_to(&mut body[start..]);
    }
}
