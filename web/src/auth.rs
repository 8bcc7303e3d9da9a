//! [`Auth`]: the token callback, the same hook as the npm package's
//! `auth: { token: () => string | Promise<string> }`. It is called for every request; the
//! token goes out as `Authorization: Bearer <token>`. A 401 calls it once more and sends
//! the request again (the 401's body cancelled, unread); a second 401 is an [`ErrorCode::Unauthorized`](crate::ErrorCode)
//! error (`ERR_UNAUTHORIZED`). A callback that fails, or gives something that is not a
//! bearer token (RFC 6750's b64token: letters, digits and `-._~+/`, then `=` padding; no
//! spaces or line breaks, which the browser would refuse in a header), is the same error
//! with nothing sent, as in the npm package: retried like a 401, and not counted towards
//! the breaker (the backend did nothing wrong). A request given up on while its token is
//! awaited (past its deadline, cancelled, the cache disposed or dropped) drops the
//! callback's future and is never sent.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

/// What a token callback returns: the token, or why there is none.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>>>>;

/// A token callback.
#[derive(Clone)]
pub struct Auth {
    token: Rc<dyn Fn() -> TokenFuture>,
}

impl Auth {
    /// From an async Rust closure.
    pub fn new<F, Fut>(token: F) -> Auth
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = Result<String, String>> + 'static,
    {
        Auth {
            token: Rc::new(move || Box::pin(token()) as TokenFuture),
        }
    }

    /// A token that never changes.
    pub fn fixed(token: impl Into<String>) -> Auth {
        let token: String = token.into();
        Auth::new(move || std::future::ready(Ok(token.clone())))
    }

    /// Asks the callback for a token.
    pub fn token(&self) -> TokenFuture {
        (self.token)()
    }

    /// From a JS function returning a string or a promise of one (wasm32 only).
    #[cfg(target_arch = "wasm32")]
    pub fn from_js(f: js_sys::Function) -> Auth {
        use wasm_bindgen::JsValue;
        Auth::new(move || {
            let called = f.call0(&JsValue::UNDEFINED);
            async move {
                let v = called.map_err(|e| format!("auth.token threw: {}", show(&e)))?;
                // A string and a promise alike: Promise.resolve(v).
                let v = wasm_bindgen_futures::JsFuture::from(js_sys::Promise::resolve(&v))
                    .await
                    .map_err(|e| format!("auth.token rejected: {}", show(&e)))?;
                v.as_string().ok_or_else(|| {
                    format!(
                        "auth.token must return a string or a promise of one, got {}",
                        show(&v)
                    )
                })
            }
        })
    }
}

/// Whether `token` can go out as `Authorization: Bearer <token>`: RFC 6750's b64token
/// (`[A-Za-z0-9-._~+/]+=*`). The error says why not, never the token itself.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by cache.rs
pub(crate) fn check_token(token: &str) -> Result<(), String> {
    let body = token.trim_end_matches('=');
    let ok = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if ok {
        return Ok(());
    }
    Err(format!(
        "the auth token callback must give a bearer token (letters, digits and -._~+/, then \
         = padding), got a string of {} characters that is not one",
        token.chars().count()
    ))
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn show(v: &wasm_bindgen::JsValue) -> String {
    js_sys::JSON::stringify(v)
        .ok()
        .and_then(|s| s.as_string())
        .or_else(|| v.as_string())
        .unwrap_or_else(|| format!("{v:?}"))
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(token callback)")
    }
}

#[cfg(test)]
mod tests {
    use super::check_token;

    #[test]
    fn only_rfc_6750_bearer_tokens_go_out() {
        for good in [
            "abc",
            "eyJhbGciOi.eyJzdWIi.c2ln",
            "a-b_c~d+e/f",
            "YWJj==",
            "x=",
        ] {
            assert_eq!(check_token(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "=",
            "good\nbad",
            "a b",
            "tok\r",
            "a=b",
            "caf\u{e9}",
            "a,b",
        ] {
            let e = check_token(bad).unwrap_err();
            assert!(e.contains("must give a bearer token"), "{bad:?}: {e}");
        }
    }
}
