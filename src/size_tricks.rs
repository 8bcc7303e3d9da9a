//! The size tricks: code written a harder way than it would otherwise be, to keep the
//! browser's wasm small, gathered here with what each saves. Only tricks that save at least
//! 0.3 KB of the gzipped browser page are kept (issue 21); the others were written the plain
//! way again (docs/BENCHMARKS.md, "Size tricks", lists them with their measurements).
//!
//! Savings are gzipped bytes of the browser's `tilewarm_bg.wasm` as `scripts/build-pkg.sh`
//! builds it; "re-measured" means built with and without on the same tree on 2026-12-02,
//! otherwise the figure is the one measured when the trick went in (the commit named).
//!
//! In this module:
//!
//! | trick | instead of | saves |
//! | --- | --- | ---: |
//! | [`sort_pairs`]: a bottom-up merge sort, the core's one sort | `sort_unstable` (ipnsort) | 1.3 KB (a99cbcf) |
//! | [`Num`]: numbers in messages through ryu | core's float formatting | about 9 KB of wasm, raw, when it went in |
//! | [`Quoted`], [`QuotedChar`]: strings in messages escaped by hand | `{:?}` and its Unicode tables | 2.6 KB (d30ca06) |
//! | `write_escaped`: the escaping itself, one `match` | `char::escape_default`'s iterator | 0.43 KB (0418588) |
//!
//! Beside the code they shape (data-structure and loop choices of their modules, which
//! would be harder to read moved out; each one's doc gives its saving too):
//!
//! | where | trick | instead of | saves |
//! | --- | --- | --- | ---: |
//! | `batch::coalesce` | sorted `(tile, group)` pairs | a map of sets | 1.3 KB, re-measured |
//! | `TileId::from_str` | split the bytes at `/` | `str::split`'s char searcher | 0.41 KB, re-measured |
//! | `batch::backoff` | entries in a sorted `Vec` | `HashMap<u64, Entry>` | 0.37 KB, re-measured |
//! | `client` | request tiers in a `Vec` | `HashMap<RequestId, Access>` | 0.47 KB, re-measured |
//! | `tile::sin_cos_mercator` | fdlibm's kernels, one reduction | libm `tan`/`cos` | 2.27 KB (3afee42; also faster) |
//! | `tile::rem_euclid` | `floor` | `%` (`fmod`) | about 2 KB of wasm, raw |
//! | `tile::CoverTiles` | a row/column iterator | `flat_map` over rows | 0.36 KB (4eff910) |
//! | `batch::batcher` | in-flight requests in an id-ordered `Vec` | a hash map | 0.71 KB (890ea3e) |
//! | `batch::queue` | loose ids in a `Vec`, requeued by `append` | a `VecDeque`; `Vec::splice` | 0.77 KB and 0.61 KB (8a26ff7, af14781) |
//! | `batch` | `cancel_unwanted`, `overdue`, the requeue push in loops | `filter`/`collect` chains | 0.42 KB (4edc6f3) |
//! | `client::response` | shown-before and unkept tiles gathered in loops | `collect` chains | 0.38 KB (7f88f77) |
//! | `cache` | `remove_ids`, `remove_items_where`, `tiles_where`, `drop_lists_where` over `&dyn` predicates | one iterator chain each | 0.5 KB (5edf332) |
//! | `clock::Clock::read` | `#[inline(never)]`: one copy for the twenty-odd calls | inlined at each | 0.54 KB (6161269) |
//! | `planner` | tiles ordered by `(score key, tile)` pairs | `(f64, TileId)` vectors | 0.4 KB (03680b9) |
//!
//! `tile::TileSet` (sorted packed ids instead of hash sets) saved less than 0.3 KB when it
//! went in (da62e6c, 3d46e01) but is left as it is for now: it is the batcher's and the
//! client's set type, which are being restructured for the per-frame fast path (issue 22).

/// Sorts `(u64, u64)` keys ascending. Every sort on the core's paths goes through this
/// one function (ids as `(id, 0)`, scores as `(bits, tile)`), so the wasm carries a single
/// copy of the sort code. Equal keys are equal values, so the result is the one
/// `sort_unstable` gives.
///
/// Hand-written for size: a bottom-up merge sort (runs of [`RUN`] sorted by insertion, then
/// merged in passes through one scratch copy of the keys) costs the wasm about 3.1 KB
/// (1.3 KB gzipped) less than `sort_unstable`. It is `O(n log n)` whatever the input but
/// slower than `sort_unstable` (natively about 1.8x on 300 keys, 2x on 1000, 3x on 8192),
/// which is fine for the core's sorts: thousands of keys at most (a planning round's visible
/// tiles and the candidates it queues, the client's at most 8192 prefetch marks). It was not
/// fine for ranking every prefetch candidate of a large view (about 1,900 around a view of
/// 17 x 11 data tiles: 27% of that round natively); a round now ranks only the candidates
/// with work to do (issue 22, `Planner::plan_observed`).
#[inline(never)]
pub(crate) fn sort_pairs(v: &mut [(u64, u64)]) {
    let n = v.len();
    let mut start = 0;
    while start < n {
        let end = n.min(start + RUN);
        for i in start + 1..end {
            let x = v[i];
            let mut j = i;
            while j > start && v[j - 1] > x {
                v[j] = v[j - 1];
                j -= 1;
            }
            v[j] = x;
        }
        start = end;
    }
    if n <= RUN {
        return;
    }
    let mut scratch = v.to_vec();
    let mut width = RUN;
    // Whether the sorted runs of `width` are in `scratch` (else in `v`).
    let mut in_scratch = false;
    while width < n {
        if in_scratch {
            merge_runs(&scratch, v, width);
        } else {
            merge_runs(v, &mut scratch, width);
        }
        in_scratch = !in_scratch;
        width *= 2;
    }
    if in_scratch {
        v.copy_from_slice(&scratch);
    }
}

/// Length of the runs [`sort_pairs`] sorts by insertion before merging.
const RUN: usize = 16;

/// Merges each pair of neighbouring sorted runs of `width` in `src` into one run in `dst`
/// (the same length as `src`).
fn merge_runs(src: &[(u64, u64)], dst: &mut [(u64, u64)], width: usize) {
    let n = src.len();
    let mut start = 0;
    while start < n {
        let mid = n.min(start + width);
        let end = n.min(mid + width);
        let (mut i, mut j) = (start, mid);
        for out in &mut dst[start..end] {
            if j == end || (i < mid && src[i] <= src[j]) {
                *out = src[i];
                i += 1;
            } else {
                *out = src[j];
                j += 1;
            }
        }
        start = end;
    }
}

/// A number in an error message: the shortest digits that read back as the same `f64`
/// (ryu), with no `.0` on whole numbers, exponent form for very large and very small
/// magnitudes (`1e300`, `1e-7`, as JavaScript writes them), and `NaN`, `inf`, `-inf`.
/// Every float in a core message goes through this, so the wasm carries ryu's small
/// formatter and not core's float formatting (about 9 KB of wasm).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Num(pub f64);

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "inf" } else { "-inf" })
        } else {
            let mut buf = ryu::Buffer::new();
            let s = buf.format_finite(v);
            f.write_str(s.strip_suffix(".0").unwrap_or(s))
        }
    }
}

/// A string in an error message: in double quotes, with `"`, `\\` and control characters
/// escaped as `{:?}` escapes them (`\\"`, `\\n`, `\\u{7}`), every other character as it is.
/// Used instead of `{:?}`, whose Unicode tables (printable, grapheme-extend) cost the wasm
/// about 3 KB; unlike `{:?}` it leaves non-printing characters that are not control
/// characters unescaped.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quoted<'a>(pub &'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        f.write_char('"')?;
        for c in self.0.chars() {
            write_escaped(f, c, '"')?;
        }
        f.write_char('"')
    }
}

/// A character in an error message, in single quotes, escaped like [`Quoted`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct QuotedChar(pub char);

impl std::fmt::Display for QuotedChar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        f.write_char('\'')?;
        write_escaped(f, self.0, '\'')?;
        f.write_char('\'')
    }
}

/// Writes `c` as `char::escape_default` writes it when it is the quote, a backslash or a
/// control character (`\t`, `\r`, `\n`, `\"`, `\\`, `\u{7}`), else as it is. Hand-written
/// for size: `escape_default`'s iterator cost the wasm about 0.4 KB gzipped more.
fn write_escaped(f: &mut std::fmt::Formatter<'_>, c: char, quote: char) -> std::fmt::Result {
    use std::fmt::Write;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match c {
        '\t' => 't',
        '\r' => 'r',
        '\n' => 'n',
        _ if c == quote || c == '\\' => c,
        _ if c.is_control() => {
            // Control characters are below U+00A0: two hex digits at most.
            f.write_str("\\u{")?;
            let v = c as u32;
            if v >= 16 {
                f.write_char(HEX[(v >> 4) as usize & 15] as char)?;
            }
            f.write_char(HEX[v as usize & 15] as char)?;
            return f.write_char('}');
        }
        _ => return f.write_char(c),
    };
    f.write_char('\\')?;
    f.write_char(short)
}

#[cfg(test)]
mod tests {
    use super::{Num, Quoted, QuotedChar};

    proptest::proptest! {
        /// `sort_pairs` sorts as `sort_unstable` does: short and long inputs (insertion runs
        /// only, and several merge passes), few distinct keys (many equal ones) and many.
        #[test]
        fn sort_pairs_sorts_like_sort_unstable(
            v in proptest::collection::vec((0u64..4, 0u64..3), 0..100),
            w in proptest::collection::vec((proptest::num::u64::ANY, 0u64..1000), 0..3000),
        ) {
            for mut v in [v, w] {
                let mut want = v.clone();
                want.sort_unstable();
                super::sort_pairs(&mut v);
                proptest::prop_assert_eq!(v, want);
            }
        }
    }

    #[test]
    fn quoted_escapes_like_debug_for_ascii_and_controls() {
        for s in [
            "abc",
            "a\"b",
            "a\\b",
            "a\nb\tc",
            "a\u{7}b",
            "it's",
            "Zürich ✓",
            "",
        ] {
            assert_eq!(Quoted(s).to_string(), format!("{s:?}"));
        }
        for c in ['S', '\'', '"', '\n', '\u{1b}', 'ü'] {
            assert_eq!(QuotedChar(c).to_string(), format!("{c:?}"));
        }
    }

    #[test]
    fn quoted_escapes_the_quote_backslash_and_controls_as_escape_default_does() {
        for c in (0..0x3000)
            .filter_map(char::from_u32)
            .chain(['\u{10ffff}', '\u{1f600}'])
        {
            for quote in ['"', '\''] {
                let want: String = if c == quote || c == '\\' || c.is_control() {
                    c.escape_default().collect()
                } else {
                    c.to_string()
                };
                let mut got = String::new();
                std::fmt::write(&mut got, format_args!("{}", Escaped(c, quote))).unwrap();
                assert_eq!(got, want, "{:?}", c);
            }
        }
    }

    /// `write_escaped` as a `Display`, for the test above.
    struct Escaped(char, char);

    impl std::fmt::Display for Escaped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            super::write_escaped(f, self.0, self.1)
        }
    }

    #[test]
    fn num_writes_short_round_trip_numbers() {
        let cases = [
            (31.0, "31"),
            (-1.0, "-1"),
            (2.5, "2.5"),
            (123.4, "123.4"),
            (-122.3321, "-122.3321"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-0.0, "-0"),
            (1e300, "1e300"),
            (1e-7, "1e-7"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (v, want) in cases {
            assert_eq!(Num(v).to_string(), want, "{v:?}");
        }
    }
}
