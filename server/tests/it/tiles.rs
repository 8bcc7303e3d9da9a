//! `GET /v1/tiles/{z}/{x}/{y}` (issue 19): the batch's answer for one tile as a cacheable
//! GET, with a `Cache-Control` that never lets a shared cache (keyed by the URL alone) hand
//! one caller's tier to another.

use std::collections::HashMap;

use tilewarm::access::Access;
use tilewarm::protocol::{decode_response, Limits};
use tilewarm::tile::TileId;

use crate::common::{config, server, token_for, Http, Reply};

/// The densest data tile of the test city (every tier has items there).
fn tile() -> TileId {
    let o = tilewarm::origin::Origin::new(tilewarm::dataset::synthetic_city(42, 5_000)).unwrap();
    let (t, _) = o
        .occupied_tiles(14)
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .unwrap();
    for a in Access::ALL {
        assert!(
            o.tile_items(t, Access::Agent).any(|i| i.access == a),
            "{a} in {t}"
        );
    }
    t
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

/// `max-age` of a `Cache-Control` value.
fn max_age(cc: &str) -> u32 {
    cc.split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .unwrap_or_else(|| panic!("no max-age in {cc:?}"))
        .parse()
        .unwrap()
}

/// Whether a shared cache (a CDN, a proxy) may keep `r` under its URL (RFC 9111 5.2.2).
fn shareable(r: &Reply) -> bool {
    let cc = header(r, "cache-control").unwrap_or("");
    r.status == 200 && !cc.contains("private") && !cc.contains("no-store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tile_answers_as_the_batch_does_with_the_shortest_ttl_as_max_age() {
    let s = server(config()).await;
    let t = tile();
    let anon = Http::anonymous();
    let r = anon.get(&format!("{}/v1/tiles/{t}", s.url())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(header(&r, "x-tilewarm-access"), Some("public"));
    let cc = header(&r, "cache-control").unwrap();
    assert!(cc.starts_with("public, "), "{cc}");
    let got = decode_response(&r.body, &Limits::default()).unwrap();
    let ttls = got
        .tiles
        .iter()
        .map(|l| l.ttl.unwrap())
        .chain(got.items.iter().map(|i| i.ttl.unwrap()));
    assert_eq!(max_age(cc), ttls.min().unwrap());
    assert!(!got.items.is_empty());
    assert!(got.items.iter().all(|i| i.access == Access::Public));

    // The same as the batch, for a data tile and a coarser one (fanned out).
    let http = Http::new();
    for (tile, access) in [(t, "agent"), (t.parent().unwrap(), "registered")] {
        let get = http
            .get(&format!("{}/v1/tiles/{tile}?access={access}", s.url()))
            .await;
        assert_eq!(get.status, 200, "{}", get.text());
        let post = http
            .ok(
                &s,
                &format!(r#"{{"tiles":["{tile}"],"access":"{access}"}}"#),
            )
            .await;
        let get = decode_response(&get.body, &Limits::default()).unwrap();
        let ids = |r: &tilewarm::protocol::BatchResponse<_>| {
            let mut v: Vec<String> = r.items.iter().map(|i| i.id.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(ids(&get), ids(&post), "{tile}");
        assert_eq!(get.tiles.len(), 1);
        assert_eq!(get.tiles[0].tile, tile);
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_and_queries_and_tiers_are_refused_and_not_kept() {
    let s = server(config()).await;
    let t = tile();
    let anon = Http::anonymous();
    let cases = [
        (format!("/v1/tiles/{t}?access=agent"), 403, "forbidden"),
        (format!("/v1/tiles/{t}?access=admin"), 400, "bad_request"),
        (format!("/v1/tiles/{t}?tier=agent"), 400, "bad_request"),
        ("/v1/tiles/14/1/99999".to_string(), 404, "not_found"),
        ("/v1/tiles/0/0/1".to_string(), 404, "not_found"),
        ("/v1/tiles/5/+1/0".to_string(), 400, "bad_request"),
        ("/v1/tiles/5/123456789/0".to_string(), 400, "bad_request"),
        ("/v1/tiles/25/1/1".to_string(), 400, "bad_request"),
        ("/v1/tiles/a/b/c".to_string(), 400, "bad_request"),
    ];
    for (path, status, code) in cases {
        let r = anon.get(&format!("{}{path}", s.url())).await;
        // Only the 403 for a tier above the credential names the caller's (verified) tier.
        assert_eq!(
            header(&r, "x-tilewarm-access"),
            (status == 403).then_some("public"),
            "{path}"
        );
        let message = r.error(status, code);
        assert_eq!(
            header(&r, "cache-control"),
            Some("no-store"),
            "{path}: {message}"
        );
    }
    let r = anon
        .send("POST", &format!("{}/v1/tiles/{t}", s.url()), &[], "")
        .await;
    r.error(405, "method_not_allowed");
    s.shutdown().await;
}

/// The security test: a shared cache keyed by the URL alone (what a CDN in front of the
/// server is) keeps every answer the server lets it keep; no caller may then be served an
/// item above its own verified tier from it. It fails when the server marks an answer for a
/// higher tier as shareable (`cache_control` answering `public` for every tier).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_cache_keyed_by_the_url_never_serves_a_tier_to_a_caller_below_it() {
    let s = server(config()).await;
    let t = tile();
    let mut cdn: HashMap<String, Reply> = HashMap::new();
    let callers = [
        (None, Http::anonymous()),
        (
            Some(Access::Registered),
            Http::with_token(Some(token_for(Access::Registered))),
        ),
        (Some(Access::Agent), Http::new()),
    ];
    let urls: Vec<String> = std::iter::once(format!("{}/v1/tiles/{t}", s.url()))
        .chain(
            Access::ALL
                .iter()
                .map(|a| format!("{}/v1/tiles/{t}?access={a}", s.url())),
        )
        .collect();
    // Every caller asks for every URL, highest tier first (the order that would poison a
    // shared cache), through the cache.
    for (verified, http) in callers.iter().rev() {
        let verified = verified.unwrap_or(Access::Public);
        for url in &urls {
            let r = match cdn.get(url) {
                Some(kept) => Reply {
                    status: kept.status,
                    headers: kept.headers.clone(),
                    body: kept.body.clone(),
                },
                None => {
                    let r = http.get(url).await;
                    if shareable(&r) {
                        cdn.insert(
                            url.clone(),
                            Reply {
                                status: r.status,
                                headers: r.headers.clone(),
                                body: r.body.clone(),
                            },
                        );
                    }
                    r
                }
            };
            if r.status != 200 {
                continue;
            }
            let got = decode_response(&r.body, &Limits::default()).unwrap();
            for i in &got.items {
                assert!(
                    verified.can_see(i.access),
                    "{url}: a {verified} caller was served {} item {} (cache-control {:?})",
                    i.access,
                    i.id,
                    header(&r, "cache-control")
                );
            }
        }
    }
    // Answers above public are private and vary by credential.
    let r = Http::new()
        .get(&format!("{}/v1/tiles/{t}?access=verified", s.url()))
        .await;
    assert_eq!(r.status, 200);
    assert!(header(&r, "cache-control")
        .unwrap()
        .starts_with("private, "));
    assert_eq!(header(&r, "vary"), Some("authorization"));
    // CDNs that read their own header before Cache-Control (RFC 9213) are told too.
    assert_eq!(header(&r, "cdn-cache-control"), Some("no-store"));
    assert_eq!(header(&r, "surrogate-control"), Some("no-store"));
    // Public answers: a CDN keeps them at most a short while (invalidation cannot purge it).
    let r = Http::anonymous()
        .get(&format!("{}/v1/tiles/{t}", s.url()))
        .await;
    let cc = header(&r, "cache-control").unwrap();
    let shared: u32 = cc
        .split(',')
        .find_map(|d| d.trim().strip_prefix("s-maxage="))
        .unwrap_or_else(|| panic!("no s-maxage in {cc:?}"))
        .parse()
        .unwrap();
    assert!(shared <= 60 && shared <= max_age(cc), "{cc}");
    assert_eq!(header(&r, "cdn-cache-control"), None);
    assert!(!cdn.is_empty(), "the public answers were kept");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_datas_extent_rides_on_batch_and_tile_answers() {
    let t = tile();
    let batch = format!(r#"{{"tiles":["{t}"]}}"#);
    // Without --bounds: no header.
    let s = server(config()).await;
    let r = Http::anonymous()
        .get(&format!("{}/v1/tiles/{t}", s.url()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(header(&r, "x-tilewarm-bounds"), None);
    s.shutdown().await;

    let mut c = config();
    c.bounds = Some(tilewarm::cache::parse_bounds("-122.52,47.15,-121.31,47.78").unwrap());
    let s = server(c).await;
    let http = Http::anonymous();
    let get = http.get(&format!("{}/v1/tiles/{t}", s.url())).await;
    assert_eq!(get.status, 200, "{}", get.text());
    assert_eq!(
        header(&get, "x-tilewarm-bounds"),
        Some("-122.52,47.15,-121.31,47.78")
    );
    let post = http
        .send(
            "POST",
            &format!("{}/v1/batch", s.url()),
            &[("origin", "https://demo.example")],
            batch,
        )
        .await;
    assert_eq!(post.status, 200, "{}", post.text());
    assert_eq!(
        header(&post, "x-tilewarm-bounds"),
        Some("-122.52,47.15,-121.31,47.78")
    );
    // A page on another origin can read it.
    let exposed = header(&post, "access-control-expose-headers").unwrap();
    assert!(exposed.contains("x-tilewarm-bounds"), "{exposed}");
    // A refusal carries no data, so no extent.
    let bad = http
        .send("POST", &format!("{}/v1/batch", s.url()), &[], "{")
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(header(&bad, "x-tilewarm-bounds"), None);
    s.shutdown().await;
}

#[test]
fn a_bad_extent_is_refused_at_start_naming_what_is_allowed() {
    use clap::Parser;
    // West of Greenwich the first number is negative: a value, not a flag.
    let c = tilewarm_server::config::Config::try_parse_from([
        "tilewarm-server",
        "--bounds",
        "-122.52,47.15,-121.31,47.78",
    ])
    .unwrap();
    assert_eq!(c.bounds.map(|b| b.west), Some(-122.52));
    for (arg, want) in [
        (
            "1,2,3",
            "bounds must be four numbers west,south,east,north in degrees, got \"1,2,3\"",
        ),
        (
            "0,10,1,5",
            "bounds.south must be a latitude in -90..=90, south not above north, got 10",
        ),
    ] {
        let e =
            tilewarm_server::config::Config::try_parse_from(["tilewarm-server", "--bounds", arg])
                .unwrap_err()
                .to_string();
        assert!(e.contains(want), "{e}");
    }
}
