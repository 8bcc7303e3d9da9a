//! Which deployment owns a Redis key prefix: the record at `<prefix>v4:owner`.
//!
//! Instances of one deployment share a prefix on purpose. Two *different* deployments
//! pointed at one Redis with the same prefix (the default `tw:`, or a copied config) would
//! read each other's keys: one's items served by the other, one's invalidations applied to
//! the other's data. So the first instance to use a prefix writes a small record there
//! (`SET … NX`, no expiry), a [`Fingerprint`] of what decides what the keys mean; every
//! other instance reads it and uses the tier only when it is its own
//! (`crate::tier::RedisTier::probe`). One that finds another deployment's record answers
//! from its origin, as with Redis down, and says what differs.
//!
//! The change stream (`<prefix>changes`) is one key for every deployment on the prefix:
//! each entry carries this deployment's [`Fingerprint::stream_tag`] and a reader skips
//! another's (`crate::stream::OWNER`).
//!
//! # What is in the fingerprint, and why
//! - `format`: the storage format's version ([`crate::stored::VERSION`]). The record's key
//!   carries it too (`v4:`): instances of two formats (a rolling upgrade from v3 to v4)
//!   read and write different keys, so each format has a record of its own and they never
//!   refuse each other.
//! - `data_zoom`: tile keys are data tiles at that zoom and empty blocks are counted from
//!   it; a reader at another zoom takes a block for more or fewer data tiles than it holds.
//! - `origin`: where items come from, without secrets: `memory:synthetic:<homes>:<seed>`,
//!   `memory:file:<--data path>`, a PostGIS URL or an upstream URL without its user,
//!   password or query (a PostGIS one with the table `--origin-config` names: not the file's
//!   path, which may differ between one deployment's hosts, nor the change channel, which
//!   one instance may listen to and the others not). Another
//!   origin is another data set: its items, tiers and tile lists are other ones. With
//!   `--redis-owner-origin NAME`, `name:NAME` instead: for the instances of one deployment
//!   that spell the origin differently (an address here, a host name there).
//!
//! Not in it, so one deployment may change them in a rolling restart (old and new
//! instances sharing the tier): TTLs (every value carries its own `exp`: an item written
//! with an old TTL is served until then, as during any TTL change), `--split-levels`
//! (every instance reads only the blocks it knows, and invalidations delete blocks at every
//! level), size limits, auth and admission flags, warm-up, timeouts. Tiers are no flag:
//! the four are fixed by the format (its tier byte).
//!
//! A change of a field that is in it is a new deployment: give it a new `--redis-prefix`
//! (a cold cache, no waiting), or start its first instance with `--redis-take-over`
//! (`crate::tier::RedisTier` writes its record over the old one, waits until the old
//! instances have seen it and stepped off, then invalidates `all`).

use crate::config::Config;
use crate::stored::VERSION;

/// The first line of every record: what it is, and the record's own layout version.
const HEADER: &str = "tilewarm-owner 1";

/// What decides what this deployment's keys mean ([module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    fields: Vec<(&'static str, String)>,
}

/// How the record in Redis compares with this instance's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The record is this deployment's (or was absent and is now).
    This,
    /// Another deployment's: what differs, for the error.
    Other(String),
}

impl Fingerprint {
    /// The fingerprint of the deployment `config` describes.
    pub fn of(config: &Config) -> Fingerprint {
        Fingerprint {
            fields: vec![
                ("format", VERSION.trim_end_matches(':').to_owned()),
                ("data_zoom", config.data_zoom.to_string()),
                ("origin", origin_identity(config)),
            ],
        }
    }

    /// The record's text: the header, then one `name=value` line per field.
    pub fn encode(&self) -> String {
        let mut s = String::from(HEADER);
        for (k, v) in &self.fields {
            s.push('\n');
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        }
        s
    }

    /// This deployment's tag on the change stream's entries (`crate::stream::OWNER`): a
    /// 64-bit FNV-1a hash of every field but `format`, in hex. Not the format: instances of
    /// two formats sharing a prefix in a rolling upgrade apply each other's invalidations
    /// (docs/server.md, *Cache tier*).
    pub fn stream_tag(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (k, v) in self.fields.iter().filter(|(k, _)| *k != "format") {
            for b in k.bytes().chain([b'=']).chain(v.bytes()).chain([b'\n']) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }

    /// Compares the record found in Redis with this fingerprint.
    pub fn compare(&self, stored: &[u8]) -> Owner {
        let Ok(text) = std::str::from_utf8(stored) else {
            return Owner::Other("the record is not text (not written by tilewarm-server)".into());
        };
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Owner::Other(format!(
                "the record does not start with {HEADER:?} (another program's, or a newer \
                 layout): {:?}",
                text.chars().take(120).collect::<String>()
            ));
        }
        let theirs: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once('=')).collect();
        let mut diffs = Vec::new();
        for (k, mine) in &self.fields {
            match theirs.iter().find(|(tk, _)| tk == k) {
                Some((_, v)) if v == mine => {}
                Some((_, v)) => diffs.push(format!("{k} is {v:?} there, {mine:?} here")),
                None => diffs.push(format!("{k} is not in the record, {mine:?} here")),
            }
        }
        for (k, v) in &theirs {
            if !self.fields.iter().any(|(mk, _)| mk == k) {
                diffs.push(format!("{k} is {v:?} there, unknown here"));
            }
        }
        if diffs.is_empty() {
            Owner::This
        } else {
            Owner::Other(diffs.join("; "))
        }
    }
}

/// The error told (logged) when the prefix belongs to another deployment.
pub fn conflict_message(prefix: &str, key: &str, diffs: &str) -> String {
    // Only when the origin is all that differs: a name cannot make one deployment of two
    // data zooms or formats.
    let spelling = if diffs.split("; ").all(|d| d.starts_with("origin is ")) {
        ". If both are one deployment whose instances spell the origin differently, give \
         each the same --redis-owner-origin and start one of them once with \
         --redis-take-over (the name changes the record: the tier is invalidated once)"
    } else {
        ""
    };
    format!(
        "redis prefix {prefix:?} belongs to another deployment (record {key}): {diffs}. This \
         instance does not use the Redis tier (it answers from its origin, as with Redis \
         down) and checks again every 2 s. Give this deployment its own --redis-prefix; or, \
         if the other deployment is gone, delete every key under the prefix (this instance \
         then takes it), or start one instance with --redis-take-over{spelling}"
    )
}

/// Where items come from, without secrets ([module docs](self)): `--redis-owner-origin`
/// when given.
pub fn origin_identity(config: &Config) -> String {
    if let Some(name) = &config.redis_owner_origin {
        return format!("name:{}", name.trim());
    }
    let base = match config.origin.as_deref() {
        None => memory(config),
        Some(s) if s.eq_ignore_ascii_case("memory") => memory(config),
        Some(url) => without_secrets(url),
    };
    if !matches!(
        crate::origin::OriginSpec::parse(config.origin.as_deref()),
        Ok(crate::origin::OriginSpec::Postgis(_))
    ) {
        return base;
    }
    // The table `--origin-config` names (or the default one), not the file's path: the
    // path may differ between the hosts of one deployment, and so may the change channel
    // (one instance listening for the database's changes, the others not).
    match crate::origin::postgis::Layout::load(config.origin_config.as_deref()) {
        Ok(layout) => format!("{base} table:{}", layout.table),
        // Unreadable here, the start refuses it before the tier is used.
        Err(_) => base,
    }
}

/// The memory origin's data set: `--data`'s path, or the synthetic city's size and seed.
fn memory(config: &Config) -> String {
    match &config.data {
        Some(path) => format!("memory:file:{}", path.display()),
        None => format!(
            "memory:synthetic:{}:{}",
            config.synthetic_homes, config.seed
        ),
    }
}

/// `url` without its user, password, query and fragment, the scheme and host in lower
/// case.
fn without_secrets(url: &str) -> String {
    let Some((scheme, auth, tail)) = crate::origin::url_parts(url) else {
        return url.split(['?', '#']).next().unwrap_or_default().to_owned();
    };
    let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    let path = tail.split(['?', '#']).next().unwrap_or_default();
    format!(
        "{}://{}{path}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut Config)) -> Fingerprint {
        let mut c = Config::default();
        f(&mut c);
        Fingerprint::of(&c)
    }

    #[test]
    fn the_same_config_is_the_same_owner_and_flags_outside_it_do_not_matter() {
        let a = with(|_| {});
        let b = with(|c| {
            c.ttl_active_s = 60;
            c.split_levels = 1;
            c.origin_latency_ms = 500;
            c.warmup_ring = 0;
        });
        assert_eq!(b.compare(a.encode().as_bytes()), Owner::This);
    }

    #[test]
    fn the_stream_tag_follows_the_fields_but_the_format() {
        let a = with(|_| {});
        let mut v3 = a.clone();
        v3.fields[0].1 = "v3".into();
        assert_eq!(a.stream_tag(), v3.stream_tag());
        assert_eq!(a.stream_tag(), with(|c| c.ttl_active_s = 1).stream_tag());
        assert_ne!(a.stream_tag(), with(|c| c.seed = 7).stream_tag());
        assert_ne!(a.stream_tag(), with(|c| c.data_zoom = 15).stream_tag());
        assert_eq!(a.stream_tag().len(), 16);
    }

    #[test]
    fn a_different_zoom_or_origin_says_what_differs() {
        let a = with(|_| {});
        let b = with(|c| {
            c.data_zoom = 15;
            c.seed = 7;
        });
        let Owner::Other(why) = b.compare(a.encode().as_bytes()) else {
            panic!("taken for the same deployment");
        };
        assert!(
            why.contains("data_zoom is \"14\" there, \"15\" here"),
            "{why}"
        );
        assert!(
            why.contains(
                "origin is \"memory:synthetic:50000:42\" there, \"memory:synthetic:50000:7\" here"
            ),
            "{why}"
        );
    }

    #[test]
    fn an_origin_named_by_the_operator_is_the_same_however_each_host_spells_the_origin() {
        let named = |origin: &str, name: &str| {
            with(|c| {
                c.origin = Some(origin.into());
                c.redis_owner_origin = Some(name.into());
            })
        };
        let a = named("https://10.0.0.7/v1/batch", "listings");
        let b = named("https://api.internal/v1/batch", "listings");
        assert!(
            a.encode().ends_with("origin=name:listings"),
            "{}",
            a.encode()
        );
        assert_eq!(b.compare(a.encode().as_bytes()), Owner::This);
        assert_eq!(a.stream_tag(), b.stream_tag());
        let Owner::Other(why) =
            named("https://10.0.0.7/v1/batch", "shops").compare(a.encode().as_bytes())
        else {
            panic!("another name taken for the same deployment");
        };
        assert!(
            why.contains("origin is \"name:listings\" there, \"name:shops\" here"),
            "{why}"
        );
        // Named on one host and not on another: two deployments, said plainly.
        let unnamed = with(|c| c.origin = Some("https://10.0.0.7/v1/batch".into()));
        let Owner::Other(why) = unnamed.compare(a.encode().as_bytes()) else {
            panic!("a named origin taken for an unnamed one");
        };
        let told = conflict_message("tw:", "tw:v4:owner", &why);
        assert!(
            told.contains("give each the same --redis-owner-origin and start one of them once with --redis-take-over"),
            "{told}"
        );
        // Another zoom, with or without another origin: no name makes them one deployment.
        for seed in [42, 7] {
            let zoom = with(|c| {
                c.data_zoom = 15;
                c.seed = seed;
            })
            .compare(with(|_| {}).encode().as_bytes());
            let Owner::Other(why) = zoom else {
                panic!("another zoom taken for the same deployment");
            };
            let told = conflict_message("tw:", "tw:v4:owner", &why);
            assert!(!told.contains("--redis-owner-origin"), "{told}");
        }
    }

    #[test]
    fn a_record_of_something_else_is_another_owner() {
        let a = with(|_| {});
        for junk in [&b"hello"[..], b"\xff\xfe", b""] {
            assert!(matches!(a.compare(junk), Owner::Other(_)), "{junk:?}");
        }
        let extra = format!("{}\nshard=2", a.encode());
        let Owner::Other(why) = a.compare(extra.as_bytes()) else {
            panic!("a field unknown here was ignored");
        };
        assert!(why.contains("shard is \"2\" there, unknown here"), "{why}");
    }

    #[test]
    fn the_origin_identity_holds_no_secret() {
        let f = with(|c| {
            c.origin = Some(
                "postgres://user:s3cret@DB.example:5432/geo?password=x&sslmode=require".into(),
            );
        });
        let text = f.encode();
        assert!(
            text.contains("origin=postgres://db.example:5432/geo"),
            "{text}"
        );
        assert!(
            !text.contains("s3cret") && !text.contains("user") && !text.contains("password"),
            "{text}"
        );
        let up = with(|c| c.origin = Some("https://tok@up.example/v1/batch#x".into()));
        assert!(
            up.encode().ends_with("origin=https://up.example/v1/batch"),
            "{}",
            up.encode()
        );
    }

    #[test]
    fn a_postgis_origin_is_its_table_not_the_layout_files_path_or_channel() {
        let dir = std::env::temp_dir().join(format!("tw-owner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let quiet = dir.join("quiet.toml");
        std::fs::write(&quiet, "channel = \"\"\n").unwrap();
        let other = dir.join("other.toml");
        std::fs::write(&other, "table = \"shops\"\n").unwrap();
        let pg = |layout: Option<&std::path::Path>| {
            with(|c| {
                c.origin = Some("postgres://db.example/geo".into());
                c.origin_config = layout.map(Into::into);
            })
        };
        let default = pg(None);
        assert!(
            default
                .encode()
                .ends_with("origin=postgres://db.example/geo table:tilewarm_items"),
            "{}",
            default.encode()
        );
        // One instance of a deployment not listening (another file, another channel).
        assert_eq!(
            pg(Some(&quiet)).compare(default.encode().as_bytes()),
            Owner::This
        );
        let Owner::Other(why) = pg(Some(&other)).compare(default.encode().as_bytes()) else {
            panic!("another table taken for the same deployment");
        };
        assert!(why.contains("table:shops"), "{why}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
