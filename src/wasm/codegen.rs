//! Writes the JavaScript side of the boundary from [`super::boundary`] and
//! [`crate::client::options`]:
//! - `js/gen/boundary.js`: the tags, codes, names and option lists `js/cache.js` imports
//!   (`scripts/build-pkg.sh` bundles it into `cache.js`, so it costs the page no module of
//!   its own);
//! - `js/gen/types.d.ts`: the public types built from the same tables
//!   (`TilewarmErrorCode`, `FetchErrorCode`, `RequestKind`, `TileState`, `Access`,
//!   `TileCacheStats`, `TileCacheOptions`), which `js/index.d.ts` re-exports;
//! - the option and error-code tables of `js/README.md`, between `<!-- gen:NAME -->` and
//!   `<!-- /gen:NAME -->` markers.
//!
//! [`generated_files_are_current`] fails when a committed file differs from what would be
//! written (so the JS cannot drift from the Rust); `make gen` (the same test with
//! `TILEWARM_WRITE_GEN=1`) writes them.

use std::fmt::Write as _;
use std::path::Path;

use super::args::{MAX_BBOX_TILES, MAX_RING};
use super::boundary::{
    Code, ErrorClass, FailureCode, Tag, TileOp, REQUEST_KINDS, STATS, TILE_STATES,
};
use crate::access::Access;
use crate::client::options::{Check, Opt, ACCESS_ALLOWED, CLASS_TTL, OPTIONS};
use crate::client::ClientConfig;
use crate::planner::MAX_VIEW_ZOOM;
use crate::protocol::{ErrorCode, Limits};
use crate::tile::TileId;
use crate::tile::MAX_ZOOM;

const HEADER: &str =
    "// Generated from src/wasm/boundary.rs and src/client/options.rs by `make gen`: do not\n\
// edit. `cargo test --features wasm` fails when this file is stale.\n";

/// A doc with the limits it names (`{max_bbox_tiles}`, ...) written in.
fn fill(text: &str) -> String {
    let limits = [
        ("{max_bbox_tiles}", MAX_BBOX_TILES.to_string()),
        (
            "{max_visible_tiles}",
            ClientConfig::default()
                .planner
                .max_visible_tiles
                .to_string(),
        ),
    ];
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for (name, value) in limits {
        text = text.replace(name, &value);
    }
    text
}

/// Text wrapped at 96 columns, as doc comment lines with `indent`.
fn doc(out: &mut String, indent: &str, text: &str) {
    let text = fill(text);
    let one = format!("{indent}/** {text} */");
    if one.len() <= 96 {
        out.push_str(&one);
        out.push('\n');
        return;
    }
    out.push_str(indent);
    out.push_str("/**\n");
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && indent.len() + 3 + line.len() + 1 + word.len() > 96 {
            let _ = writeln!(out, "{indent} * {line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    let _ = writeln!(out, "{indent} * {line}");
    let _ = writeln!(out, "{indent} */");
}

fn quoted(s: &str) -> String {
    format!("'{s}'")
}

fn list<I: IntoIterator<Item = String>>(items: I) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

/// `{head}[items];` on one line, or with the items packed onto lines of up to 96 columns.
fn statement<I: IntoIterator<Item = String>>(out: &mut String, head: &str, items: I) {
    let items: Vec<String> = items.into_iter().collect();
    let one = format!("{head}{};", list(items.iter().cloned()));
    if one.len() <= 96 {
        out.push_str(&one);
        out.push('\n');
        return;
    }
    out.push_str(head);
    out.push_str("[\n");
    let mut line = String::from(" ");
    for item in items {
        if line.len() + 1 + item.len() + 1 > 96 {
            let _ = writeln!(out, "{line}");
            line = String::from(" ");
        }
        line.push(' ');
        line.push_str(&item);
        line.push(',');
    }
    let _ = writeln!(out, "{line}");
    out.push_str("];\n");
}

/// One `export const` (or `export declare const`) line per `(name, value)`.
fn constants(out: &mut String, head: &str, pairs: impl IntoIterator<Item = (String, String)>) {
    for (name, value) in pairs {
        let _ = writeln!(out, "{head}{name}{value};");
    }
}

fn union<I: IntoIterator<Item = String>>(items: I) -> String {
    items.into_iter().collect::<Vec<_>>().join(" | ")
}

/// The JS constant of a failure code: `FAILED_TIMEOUT`.
fn failed(f: FailureCode) -> String {
    format!("FAILED_{}", upper_snake(&format!("{f:?}")))
}

/// `SomeName` as `SOME_NAME`.
fn upper_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A number as JavaScript writes it (`1`, not `1.0`).
fn js_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// The groups of the options, in order: `("", [top-level names])` first, then each group
/// with its members' names.
fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = vec![("", Vec::new())];
    for o in &OPTIONS {
        match o.path.split_once('.') {
            None => out[0].1.push(o.path),
            Some((g, name)) => {
                if let Some(entry) = out.iter_mut().find(|(n, _)| *n == g) {
                    entry.1.push(name);
                } else {
                    out[0].1.push(g);
                    out.push((g, vec![name]));
                }
            }
        }
    }
    out
}

/// An option's doc with its range and default written in, and its default as the README
/// shows it (`None`: required).
fn option_doc(o: &Opt) -> (String, Option<String>) {
    let defaults = ClientConfig::default();
    let (allowed, default) = match &o.check {
        Check::Number(num) => (num.range.allowed(), Some(js_number((num.get)(&defaults)))),
        Check::PerClass => {
            let mut classes: Vec<(&String, &u64)> = defaults.cache.class_ttl_ms.iter().collect();
            classes.sort();
            let entries: Vec<String> = classes
                .into_iter()
                .map(|(c, ms)| format!("{c}: {}", ms / 1000))
                .collect();
            (
                CLASS_TTL.allowed(),
                Some(format!("`{{ {} }}`", entries.join(", "))),
            )
        }
        Check::Access => (
            ACCESS_ALLOWED.to_string(),
            Some(format!("`'{}'`", defaults.access.as_str())),
        ),
        Check::TileSize => (
            super::config::TILE_SIZE_ALLOWED.to_string(),
            Some("256".into()),
        ),
        Check::Shell => (String::new(), o.default.map(|d| format!("`{d}`"))),
    };
    let text = o.doc.replace("{allowed}", &allowed);
    let text = match &default {
        Some(d) => format!("{text} Default {d}."),
        None => text,
    };
    (text, default)
}

/// `js/gen/boundary.js`.
pub(crate) fn js() -> String {
    let mut s = String::from(HEADER);
    s.push_str(
        "// The JS half of src/wasm/: what js/cache.js needs to read the engine's records and\n",
    );
    s.push_str("// to name what the wasm hands out as numbers.\n\n");

    s.push_str(
        "// Record tags of the engine's output lists, each with its record's layout (numbers |\n",
    );
    s.push_str("// references).\n");
    for t in Tag::ALL {
        doc(&mut s, "", t.doc());
        let _ = writeln!(s, "export const {} = {};", t.js(), t.num());
    }
    s.push_str("// What `Engine.tiles` does with its tiles, each with what it hands back.\n");
    for op in TileOp::ALL {
        doc(&mut s, "", op.doc());
        let _ = writeln!(s, "export const {} = {};", op.js(), op.num());
    }

    s.push_str("/** Failure codes for `Engine.failure`; the `code` of the page's error is at that index. */\n");
    constants(
        &mut s,
        "export const ",
        FailureCode::ALL
            .iter()
            .map(|f| (failed(*f), format!(" = {}", f.num()))),
    );
    statement(
        &mut s,
        "export const FAILURE_CODES = ",
        FailureCode::ALL.iter().map(|f| quoted(f.js())),
    );

    s.push_str(
        "\n/** The `code`s of thrown errors; an error record names one by its index in CODES. */\n",
    );
    constants(
        &mut s,
        "export const ",
        Code::ALL
            .iter()
            .map(|c| (c.js().into(), format!(" = '{}'", c.js()))),
    );
    statement(
        &mut s,
        "export const CODES = ",
        Code::ALL.iter().map(|c| c.js().to_string()),
    );
    let classes: Vec<String> = ErrorClass::ALL
        .iter()
        .map(|c| format!("{} {}", c.num(), c.doc().trim()))
        .collect();
    doc(
        &mut s,
        "",
        &format!(
            "The class of a thrown error, by its index in an error record: {}",
            classes.join(" ")
        ),
    );
    statement(
        &mut s,
        "export const ERROR_CLASSES = ",
        ErrorClass::ALL.iter().map(|c| c.js().to_string()),
    );

    s.push_str("\n/** Names of what crosses as a code: the code is the index. */\n");
    statement(
        &mut s,
        "export const REQUEST_KINDS = ",
        REQUEST_KINDS.iter().map(|k| quoted(k.js)),
    );
    statement(
        &mut s,
        "export const TILE_STATES = ",
        TILE_STATES.iter().map(|t| quoted(t.js)),
    );
    statement(
        &mut s,
        "export const TIERS = ",
        Access::ALL.iter().map(|a| quoted(a.as_str())),
    );
    s.push_str(
        "/** Each protocol error code with its HTTP status (`ErrorCode::http_status`). */
",
    );
    statement(
        &mut s,
        "export const ERROR_STATUSES = ",
        (ErrorCode::ALL.iter()).map(|c| format!("[{}, {}]", quoted(c.as_str()), c.http_status())),
    );
    s.push_str("/** The `stats()` fields in the order `Engine.stats` hands their values over; FLAGS are booleans. */\n");
    statement(
        &mut s,
        "export const STATS = ",
        STATS.iter().map(|st| quoted(st.name)),
    );
    statement(
        &mut s,
        "export const FLAGS = ",
        STATS.iter().filter(|st| st.flag).map(|st| quoted(st.name)),
    );

    s.push_str(
        "\n/** The options: top-level names (groups at their first member's place), each group's\n",
    );
    s.push_str(" * members, and the numeric options' paths in the order `new Engine` takes their values. */\n");
    let groups = groups();
    statement(
        &mut s,
        "export const OPTIONS = ",
        groups[0].1.iter().map(|n| quoted(n)),
    );
    s.push_str("export const GROUPS = {\n");
    for (g, names) in &groups[1..] {
        let _ = writeln!(s, "  {g}: {},", list(names.iter().map(|n| quoted(n))));
    }
    s.push_str("};\n");
    statement(
        &mut s,
        "export const NUMBERS = ",
        crate::client::options::numbers().map(|(p, _)| quoted(p)),
    );

    s.push_str("\n/** Largest response body read, in bytes (the protocol's `Limits::max_body_bytes`). */\n");
    let _ = writeln!(
        s,
        "export const MAX_BODY_BYTES = {};",
        Limits::default().max_body_bytes
    );
    s.push_str("/** A packed tile id is z·TILE_Z + x·TILE_X + y (`TileId::to_u64`). */\n");
    let (tile_z, tile_x) = packing();
    let _ = writeln!(s, "export const TILE_Z = {};", js_number(tile_z));
    let _ = writeln!(s, "export const TILE_X = {};", js_number(tile_x));
    s.push_str(
        "/** The response header declaring the data's extent (`protocol::BOUNDS_HEADER`). */\n",
    );
    let _ = writeln!(
        s,
        "export const BOUNDS_HEADER = {};",
        quoted(crate::protocol::BOUNDS_HEADER)
    );
    s.push_str(
        "/** The response header naming the caller's tier (`protocol::ACCESS_HEADER`): on a 403, the tier its credential gives. */\n",
    );
    let _ = writeln!(
        s,
        "export const ACCESS_HEADER = {};",
        quoted(crate::protocol::ACCESS_HEADER)
    );
    s.push_str("/** The deepest zoom and the Mercator limit of latitude (`tile::MAX_ZOOM`, `tile::MAX_LATITUDE`). */\n");
    let _ = writeln!(s, "export const MAX_ZOOM = {};", crate::tile::MAX_ZOOM);
    let _ = writeln!(
        s,
        "export const MAX_LATITUDE = {};",
        js_number(crate::tile::MAX_LATITUDE)
    );
    s
}

/// The factors of a packed tile id: z·`.0` + x·`.1` + y.
fn packing() -> (f64, f64) {
    let z = TileId::new(1, 0, 0).unwrap().to_u64() as f64;
    let x = TileId::new(1, 1, 0).unwrap().to_u64() as f64 - z;
    (z, x)
}

/// `js/gen/types.d.ts`.
pub(crate) fn types() -> String {
    let mut s = String::from(HEADER);
    s.push_str(
        "// The public types built from the boundary's tables; index.d.ts re-exports them.\n\n",
    );

    doc(
        &mut s,
        "",
        "The `code` of every error thrown for a bad argument, option or call: a `TypeError` or \
         `RangeError` (an `Error` for `ERR_DISPOSED`).",
    );
    s.push_str("export type TilewarmErrorCode =\n");
    for c in Code::ALL {
        doc(&mut s, "  ", c.doc());
        let _ = writeln!(s, "  | '{}'", c.js());
    }
    s.push_str("  ;\n\n");

    doc(
        &mut s,
        "",
        "The `code` of a failed batch request (`FetchError`).",
    );
    s.push_str("export type FetchErrorCode =\n");
    for f in FailureCode::ALL {
        doc(&mut s, "  ", f.doc());
        let _ = writeln!(s, "  | '{}'", f.js());
    }
    s.push_str("  ;\n\n");

    s.push_str("/** Which requests a `FetchError` came from. */\nexport type RequestKind =\n");
    for k in &REQUEST_KINDS {
        doc(&mut s, "  ", k.doc);
        let _ = writeln!(s, "  | '{}'", k.js);
    }
    s.push_str("  ;\n\n");

    s.push_str(
        "/** The state of a data tile (`TileCache.tileStates`). */\nexport type TileState =\n",
    );
    for t in &TILE_STATES {
        doc(&mut s, "  ", t.doc);
        let _ = writeln!(s, "  | '{}'", t.js);
    }
    s.push_str("  ;\n\n");

    s.push_str(
        "/** An access tier, lowest first. A tier sees items of its own tier and below. */\n",
    );
    let _ = writeln!(
        s,
        "export type Access = {};\n",
        union(Access::ALL.iter().map(|a| quoted(a.as_str())))
    );

    s.push_str("/** Counters since the cache was created (`TileCache.stats`). */\nexport interface TileCacheStats {\n");
    for st in &STATS {
        doc(&mut s, "  ", st.doc);
        let ty = if st.flag { "boolean" } else { "number" };
        let _ = writeln!(s, "  {}: {ty};", st.name);
    }
    s.push_str("}\n\n");

    s.push_str("/** Options of `TileCache.create`. Only `endpoint` is required. */\nexport interface TileCacheOptions {\n");
    let mut open: Option<&str> = None;
    for o in &OPTIONS {
        let (group, name) = match o.path.split_once('.') {
            Some((g, n)) => (Some(g), n),
            None => (None, o.path),
        };
        if open != group {
            if open.is_some() {
                s.push_str("  };\n");
            }
            if let Some(g) = group {
                let _ = writeln!(s, "  {g}?: {{");
            }
            open = group;
        }
        let indent = if group.is_some() { "    " } else { "  " };
        let (text, _) = option_doc(o);
        doc(&mut s, indent, &text);
        let required = matches!(o.check, Check::Shell) && o.default.is_none();
        let _ = writeln!(
            s,
            "{indent}{name}{}: {};",
            if required { "" } else { "?" },
            o.ts
        );
    }
    if open.is_some() {
        s.push_str("  };\n");
    }
    s.push_str("}\n\n");

    s
}

/// The README's option table.
fn readme_options() -> String {
    let mut s = String::from(
        "| option | default | what it does, and what is allowed |\n| --- | --- | --- |\n",
    );
    for o in &OPTIONS {
        let (text, default) = option_doc(o);
        // The default is in its own column.
        let text = match &default {
            Some(d) => text.trim_end_matches(&format!(" Default {d}.")).to_string(),
            None => text,
        };
        let default = default.unwrap_or_else(|| "(required)".into());
        let _ = writeln!(s, "| `{}` | {default} | {text} |", o.path);
    }
    s
}

/// The README's table of the codes of thrown errors and of failed requests.
fn readme_codes() -> String {
    let mut s = String::from("| `code` | when |\n| --- | --- |\n");
    for c in Code::ALL {
        let _ = writeln!(s, "| `{}` | {} |", c.js(), fill(c.doc()));
    }
    for f in FailureCode::ALL {
        let _ = writeln!(
            s,
            "| `{}` | a batch request failed: {} |",
            f.js(),
            lowercase_first(&fill(f.doc()))
        );
    }
    s
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `text` with the part between `<!-- gen:NAME -->` and `<!-- /gen:NAME -->` replaced.
fn splice(text: &str, name: &str, body: &str) -> String {
    let (open, close) = (
        format!("<!-- gen:{name} -->\n"),
        format!("<!-- /gen:{name} -->"),
    );
    let (Some(a), Some(b)) = (text.find(&open), text.find(&close)) else {
        panic!("js/README.md has no {open:?} ... {close:?} markers");
    };
    format!("{}{open}{body}{}", &text[..a], &text[b..])
}

/// Compares (or, with `TILEWARM_WRITE_GEN=1`, writes) each generated file.
#[test]
fn generated_files_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let write = std::env::var_os("TILEWARM_WRITE_GEN").is_some_and(|v| v == "1");
    let readme_path = root.join("js/README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("js/README.md");
    let readme = splice(&readme, "options", &readme_options());
    let readme = splice(&readme, "codes", &readme_codes());
    let files = [
        ("js/gen/boundary.js", js()),
        ("js/gen/types.d.ts", types()),
        ("js/README.md", readme),
    ];
    let mut stale = Vec::new();
    for (path, want) in files {
        let full = root.join(path);
        if std::fs::read_to_string(&full).ok().as_deref() == Some(want.as_str()) {
            continue;
        }
        if write {
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, want).unwrap();
        } else {
            stale.push(path);
        }
    }
    assert!(
        stale.is_empty(),
        "generated from src/wasm/ and out of date: {stale:?}; run `make gen` and commit them"
    );
}

/// The hand-written docs of the tile functions and the viewport name the limits the wasm
/// enforces, and the README's example lists the tile states.
#[test]
fn hand_written_docs_name_the_limits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let index = std::fs::read_to_string(root.join("js/index.d.ts")).unwrap();
    let readme = std::fs::read_to_string(root.join("js/README.md")).unwrap();
    for (text, file, name) in [
        (format!("zoom 0..={MAX_ZOOM}"), &index, "index.d.ts"),
        (
            format!("@param z zoom, an integer in 0..={MAX_ZOOM}"),
            &index,
            "index.d.ts",
        ),
        (
            format!("At most {MAX_BBOX_TILES} tiles."),
            &index,
            "index.d.ts",
        ),
        (
            format!("more than {MAX_BBOX_TILES} tiles"),
            &index,
            "index.d.ts",
        ),
        (
            format!("@param ring an integer in 0..={MAX_RING}"),
            &index,
            "index.d.ts",
        ),
        (
            format!("Map zoom, 0..={MAX_VIEW_ZOOM}"),
            &index,
            "index.d.ts",
        ),
        (
            format!("an integer in 0..={MAX_ZOOM}, got 31"),
            &readme,
            "README.md",
        ),
        (
            format!(
                "// [{}, ...]",
                union(TILE_STATES.iter().map(|t| quoted(t.js)))
            ),
            &readme,
            "README.md",
        ),
    ] {
        assert!(file.contains(&text), "js/{name} does not say {text:?}");
    }
}

#[test]
fn packed_tiles_read_back_in_javascript() {
    let (tile_z, tile_x) = packing();
    // What `tileName` in js/cache.js computes, in f64 as JavaScript does.
    let name = |id: f64| {
        format!(
            "{}/{}/{}",
            (id / tile_z).floor(),
            (id / tile_x).floor() % tile_x,
            id % tile_x
        )
    };
    for (z, x, y) in [
        (0, 0, 0),
        (14, 2624, 5721),
        (24, (1 << 24) - 1, (1 << 24) - 1),
        (24, 0, 1),
    ] {
        let t = TileId::new(z, x, y).unwrap();
        assert_eq!(name(t.to_u64() as f64), t.to_string());
    }
}
