//! Converts ForeCache NDSI-2D user-study logs (Battle, Chang, Stonebraker, SIGMOD 2016;
//! `U_*.csv`, one row per user action) into viewport traces.
//!
//! # The mapping, and what it assumes
//!
//! The study's interface showed a tiled map of the contiguous US and moved in whole tiles:
//! at level `L` (0–6) the country is a grid of 2^L x 2^L tiles and the view is one of them.
//! We replay that as follows:
//!
//! 1. **Extent.** The study extent is the bounding box of every tile corner in the logs'
//!    `All_raw_address` column: lon −132.156..−65.098, lat 15.1746..52.9998
//!    ([`STUDY_EXTENT`]). Level `L` splits it into 2^L x 2^L equal cells (in degrees).
//! 2. **One viewport per tile.** Each row becomes one viewport: the cell of level
//!    `ZoomLevel` that holds the row's focus (`Latitude`, `Longitude`). `start` and `zoom`
//!    rows always carry their focus. A `pan` row whose focus is unchanged from the row
//!    before (the log carries it over; 165 of the 595 pans) moves the previous cell by one
//!    cell in the direction of `Angle`, read as a compass bearing (0° north, 90° east)
//!    snapped to the nearest of 8 directions, and kept inside the grid.
//! 3. **Geography.** The homes are in Seattle, the study covers the US. Each cell is mapped
//!    linearly (per axis, in degrees) from the study extent onto a target box, by default
//!    the extent of the King County homes ([`KING_COUNTY`]), so every level of the study
//!    lands on real homes at a density a home-search map sees. What is replayed is the
//!    *navigation* — which cell follows which, at what level, after how long — which is
//!    what a prefetch policy is judged on.
//! 4. **Zoom.** A viewport `width_px` wide (default 1024) showing the mapped cell has web
//!    zoom `log2(width_px / 256 * 360 / cell_width_deg)`. With the default target, study
//!    level `L` becomes web zoom ≈ 10.2 + L (level 0 shows the whole county, level 5 a
//!    few streets). Data tiles stay at one zoom (`--tile-zoom`, default 14): run the
//!    simulator with `--min-zoom 11` so levels 1–6 show homes and level 0 (the county
//!    overview, like a map below its data zoom) shows none.
//! 5. **Time.** `t` is the row's `TimeStamp` in ms since the session's first row: the real
//!    think time between moves.
//!
//! The session name is the file stem (`U_1`).

use std::io::Read;

use crate::trace::TraceEvent;

/// Study extent (west, south, east, north) in degrees; see the module docs.
pub const STUDY_EXTENT: (f64, f64, f64, f64) = (-132.156, 15.1746, -65.098, 52.9998);

/// Extent of the King County homes data (west, south, east, north), slightly padded.
pub const KING_COUNTY: (f64, f64, f64, f64) = (-122.52, 47.15, -121.31, 47.78);

/// Converter settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    /// Where the study extent is mapped to (west, south, east, north).
    pub target: (f64, f64, f64, f64),
    /// Viewport width in pixels, for the zoom.
    pub width_px: f64,
}

impl Mapping {
    /// Checks the settings: `width_px` a finite number above 0, `target` a box with
    /// west < east and south < north in valid degrees.
    pub fn validate(&self) -> Result<(), ConvertError> {
        let bad = |m: String| Err(ConvertError::BadMapping(m));
        if !(self.width_px.is_finite() && self.width_px > 0.0) {
            return bad(format!(
                "width_px (--width-px) must be a finite number of pixels above 0, got {}",
                self.width_px
            ));
        }
        let (w, s, e, n) = self.target;
        if !(w < e && s < n) {
            return bad(format!(
                "target (--target) must be W,S,E,N with W < E and S < N, got {w},{s},{e},{n}"
            ));
        }
        if let Err(err) = tilewarm::tile::Bbox::new(w, s, e, n) {
            return bad(format!("target (--target) {w},{s},{e},{n}: {err}"));
        }
        Ok(())
    }
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            target: KING_COUNTY,
            width_px: 1024.0,
        }
    }
}

/// A log could not be converted. Line numbers are 1-based and count the header.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    #[error("the log has no column {0:?} (expected the ForeCache NDSI-2D layout)")]
    MissingColumn(&'static str),
    #[error("line {line}: {message}")]
    BadRow { line: u64, message: String },
    #[error("reading the log failed: {0}")]
    Csv(#[from] csv::Error),
    #[error("{0}")]
    BadMapping(String),
    #[error("the log has no rows after its header")]
    NoRows,
}

/// What the conversion did, for the record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConvertStats {
    pub rows: usize,
    pub pans_by_focus: usize,
    pub pans_by_angle: usize,
}

/// Milliseconds since 1970 of `YYYY-MM-DD HH:MM:SS[.fff]` (UTC; only differences matter).
fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut tp = time.split(':');
    let (hh, mm) = (
        tp.next()?.parse::<i64>().ok()?,
        tp.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = tp.next()?.parse().ok()?;
    if !(1..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || hh > 23
        || mm > 59
        || !(0.0..61.0).contains(&sec)
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + (sec * 1000.0).round() as i64)
}

/// The cell (column from the west, row from the north) of `(lon, lat)` at `level`.
fn cell_of(lon: f64, lat: f64, level: u32) -> (i64, i64) {
    let (w, s, e, n) = STUDY_EXTENT;
    let k = (1i64 << level) as f64;
    let cx = ((lon - w) / (e - w) * k).floor().clamp(0.0, k - 1.0);
    let cy = ((n - lat) / (n - s) * k).floor().clamp(0.0, k - 1.0);
    (cx as i64, cy as i64)
}

/// One cell step for a compass bearing, snapped to 8 directions: (dx east, dy south).
fn step_for(angle_deg: f64) -> (i64, i64) {
    const DIRS: [(i64, i64); 8] = [
        (0, -1),
        (1, -1),
        (1, 0),
        (1, 1),
        (0, 1),
        (-1, 1),
        (-1, 0),
        (-1, -1),
    ];
    let k = (angle_deg.rem_euclid(360.0) / 45.0).round() as usize % 8;
    DIRS[k]
}

/// The row before: its focus as logged (latitude, longitude text), level and cell.
type Prev = ((String, String), u32, (i64, i64));

/// Converts one user's log. `session` names the trace session.
pub fn convert<R: Read>(
    reader: R,
    session: &str,
    mapping: &Mapping,
) -> Result<(Vec<TraceEvent>, ConvertStats), ConvertError> {
    mapping.validate()?;
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    let headers = rdr.headers()?.clone();
    let col = |name: &'static str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or(ConvertError::MissingColumn(name))
    };
    let (c_action, c_time, c_level, c_lat, c_lon, c_angle) = (
        col("Action")?,
        col("TimeStamp")?,
        col("ZoomLevel")?,
        col("Latitude")?,
        col("Longitude")?,
        col("Angle")?,
    );
    let (w, s, e, n) = STUDY_EXTENT;
    let (tw, ts, te, tn) = mapping.target;
    let mut out = Vec::new();
    let mut stats = ConvertStats::default();
    let mut t0: Option<i64> = None;
    let mut last_t: u64 = 0;
    let mut prev: Option<Prev> = None;
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec?;
        let line = i as u64 + 2;
        let field = |c: usize, name: &str| {
            rec.get(c).ok_or_else(|| ConvertError::BadRow {
                line,
                message: format!("missing field {name}"),
            })
        };
        let bad = |message: String| ConvertError::BadRow { line, message };
        let action = field(c_action, "Action")?.trim().to_string();
        let ts_text = field(c_time, "TimeStamp")?;
        let ms = parse_timestamp(ts_text).ok_or_else(|| {
            bad(format!(
                "TimeStamp {ts_text:?} is not YYYY-MM-DD HH:MM:SS.fff"
            ))
        })?;
        let level_text = field(c_level, "ZoomLevel")?.trim();
        let level: u32 = level_text
            .parse()
            .ok()
            .filter(|l| *l <= 20)
            .ok_or_else(|| {
                bad(format!(
                    "ZoomLevel {level_text:?} is not an integer in 0..=20"
                ))
            })?;
        let num = |c: usize, name: &str| -> Result<f64, ConvertError> {
            let v = field(c, name)?.trim();
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(format!("{name} {v:?} is not a number")))
        };
        let (lat, lon, angle) = (
            num(c_lat, "Latitude")?,
            num(c_lon, "Longitude")?,
            num(c_angle, "Angle")?,
        );
        let focus = (field(c_lat, "")?.to_string(), field(c_lon, "")?.to_string());
        let cell = match (&prev, action.as_str()) {
            (Some((pf, pl, pc)), "pan") if *pf == focus && *pl == level => {
                stats.pans_by_angle += 1;
                let (dx, dy) = step_for(angle);
                let k = 1i64 << level;
                ((pc.0 + dx).clamp(0, k - 1), (pc.1 + dy).clamp(0, k - 1))
            }
            (_, "start" | "zoom" | "pan") => {
                if action == "pan" {
                    stats.pans_by_focus += 1;
                }
                cell_of(lon, lat, level)
            }
            _ => return Err(bad(format!("Action {action:?} is not start, pan or zoom"))),
        };
        prev = Some((focus, level, cell));
        let t0 = *t0.get_or_insert(ms);
        // Timestamps never go back in the logs; if one did, keep the order.
        let t = ((ms - t0).max(0) as u64).max(last_t);
        if t > crate::trace::MAX_SESSION_MS {
            return Err(bad(format!(
                "TimeStamp {ts_text:?} is {t} ms after the log's first; a session spans at most {} ms (7 days), as `run` takes it",
                crate::trace::MAX_SESSION_MS
            )));
        }
        last_t = t;
        let k = (1i64 << level) as f64;
        let (cw, ch) = ((e - w) / k, (n - s) / k);
        let cell_w = w + cell.0 as f64 * cw;
        let cell_n = n - cell.1 as f64 * ch;
        let mx = |lon: f64| tw + (lon - w) / (e - w) * (te - tw);
        let my = |lat: f64| ts + (lat - s) / (n - s) * (tn - ts);
        let (west, east) = (mx(cell_w), mx(cell_w + cw));
        let (south, north) = (my(cell_n - ch), my(cell_n));
        let zoom = (mapping.width_px / 256.0 * 360.0 / (east - west)).log2();
        let event = TraceEvent {
            session: session.to_string(),
            t,
            west,
            south,
            east,
            north,
            zoom,
            action: Some(action),
        };
        // A trace must read back: say so here, at the row, rather than at `run`.
        if let Err(err) = event.viewport() {
            return Err(bad(format!(
                "level {level} maps to a viewport that is not valid ({err}); check --width-px and --target"
            )));
        }
        out.push(event);
        stats.rows += 1;
    }
    if out.is_empty() {
        return Err(ConvertError::NoRows);
    }
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first rows of U_1.csv (long columns cut), plus a carried-over pan.
    const FIXTURE: &str = "\
UserIndex,Action,State,TimeStamp,ZoomLevel,Latitude,Longitude,All_raw_address,Angle
0,start,Foraging,2016-06-08 16:46:40.378,0,34.103049999999996,-98.6128,\"[[15.2153, -132.053], [52.9908, -65.1726]]\",0.0
1,zoom,Foraging,2016-06-08 16:47:12.389,1,32.654175,-94.1993125,\"[[18.1367, -107.299], [30.3858, -97.2569]]\",0.0
2,pan,Foraging,2016-06-08 16:47:13.675,1,41.7668,-79.5355,\"[[30.5342, -93.9559], [52.9994, -65.1151]]\",353.3093787255748
3,pan,Foraging,2016-06-08 16:47:14.778,1,41.7668,-79.5355,\"[[30.5342, -93.9559], [52.9994, -65.1151]]\",260.0
4,zoom,Navigation,2016-06-08 16:47:23.400,2,42.36835000000001,-113.94953749999999,\"[[35.4656, -124.134]]\",0.0
5,pan,Navigation,2016-06-08 16:47:26.234,2,42.36835000000001,-113.94953749999999,\"[[41.761, -116.496]]\",8.2
";

    #[test]
    fn converts_rows_to_cells_with_real_time() {
        let (ev, stats) = convert(FIXTURE.as_bytes(), "U_1", &Mapping::default()).unwrap();
        assert_eq!(ev.len(), 6);
        assert_eq!(
            stats,
            ConvertStats {
                rows: 6,
                pans_by_focus: 1,
                pans_by_angle: 2
            }
        );
        let t: Vec<u64> = ev.iter().map(|e| e.t).collect();
        assert_eq!(t, vec![0, 32_011, 33_297, 34_400, 43_022, 45_856]);
        let (tw, ts, te, tn) = KING_COUNTY;
        // Level 0 is the whole target box.
        assert!((ev[0].west - tw).abs() < 1e-9 && (ev[0].east - te).abs() < 1e-9);
        assert!((ev[0].south - ts).abs() < 1e-9 && (ev[0].north - tn).abs() < 1e-9);
        let z0 = ev[0].zoom;
        assert!((z0 - (4.0f64 * 360.0 / (te - tw)).log2()).abs() < 1e-9);
        // Level 1: focus (32.65, -94.2) is in the south-east quadrant (south of 34.09, east of -98.63).
        let mid_lon = tw + (te - tw) / 2.0;
        let mid_lat = ts + (tn - ts) / 2.0;
        assert!((ev[1].west - mid_lon).abs() < 1e-9 && (ev[1].north - mid_lat).abs() < 1e-9);
        assert!((ev[1].zoom - z0 - 1.0).abs() < 1e-9);
        // The pan moves to the focus's cell: north-east.
        assert!((ev[2].west - mid_lon).abs() < 1e-9 && (ev[2].south - mid_lat).abs() < 1e-9);
        // Carried-over focus, bearing 260° (west): one cell west, the north-west quadrant.
        assert!((ev[3].west - tw).abs() < 1e-9 && (ev[3].south - mid_lat).abs() < 1e-9);
        // Level 2 zoom, then a north pan from a carried-over focus.
        assert!((ev[4].zoom - z0 - 2.0).abs() < 1e-9);
        let ch = (tn - ts) / 4.0;
        assert!(
            (ev[5].north - (ev[4].north + ch)).abs() < 1e-9,
            "{:?} {:?}",
            ev[4],
            ev[5]
        );
        assert!((ev[5].west - ev[4].west).abs() < 1e-9);
        for e in &ev {
            e.viewport().unwrap();
        }
    }

    #[test]
    fn pans_stay_inside_the_grid() {
        let rows = "Action,TimeStamp,ZoomLevel,Latitude,Longitude,Angle\n\
start,2016-06-08 23:59:59.500,0,34.1,-98.6,0\n\
pan,2016-06-09 00:00:00.250,0,34.1,-98.6,0\n";
        let (ev, _) = convert(rows.as_bytes(), "x", &Mapping::default()).unwrap();
        assert_eq!(ev[1].t, 750, "midnight rollover");
        assert_eq!(
            ev[0].north, ev[1].north,
            "level 0 has one cell: the pan stays"
        );
    }

    #[test]
    fn bad_rows_are_named() {
        let e = convert("Action,TimeStamp\n".as_bytes(), "x", &Mapping::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the log has no column \"ZoomLevel\" (expected the ForeCache NDSI-2D layout)"
        );
        let hdr = "Action,TimeStamp,ZoomLevel,Latitude,Longitude,Angle\n";
        let e = convert(
            format!("{hdr}start,2016-06-08 16:46:40.378,0,34.1,-98.6,0\nfly,2016-06-08 16:46:41.000,0,34.1,-98.6,0\n").as_bytes(),
            "x",
            &Mapping::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3: Action \"fly\" is not start, pan or zoom"
        );
        let e = convert(
            format!("{hdr}start,yesterday,0,34.1,-98.6,0\n").as_bytes(),
            "x",
            &Mapping::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("line 2: TimeStamp \"yesterday\""),
            "{e}"
        );
        let e = convert(
            format!("{hdr}start,2016-06-08 16:46:40.378,x,34.1,-98.6,0\n").as_bytes(),
            "x",
            &Mapping::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ZoomLevel \"x\""), "{e}");
        // A year this far out overflowed the day count (a panic in debug builds).
        let e = convert(
            format!("{hdr}start,99999999999999999-01-01 00:00:00,0,34.1,-98.6,0\n").as_bytes(),
            "x",
            &Mapping::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("line 2: TimeStamp \"99999999999999999-01-01 00:00:00\""),
            "{e}"
        );
        // A mistyped year makes a session that run refuses: refused here, at its row.
        let e = convert(
            format!("{hdr}start,2016-06-08 16:46:40.378,0,34.1,-98.6,0\npan,2061-06-08 16:46:41.000,0,34.1,-98.6,90\n").as_bytes(),
            "x",
            &Mapping::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("line 3: TimeStamp \"2061-06-08 16:46:41.000\" is "),
            "{e}"
        );
        // A header and nothing else was an empty session, written without a word.
        let e = convert(hdr.as_bytes(), "x", &Mapping::default()).unwrap_err();
        assert_eq!(e.to_string(), "the log has no rows after its header");
    }

    #[test]
    fn a_mapping_that_makes_no_viewport_is_refused() {
        let convert_with = |m: Mapping| {
            convert(FIXTURE.as_bytes(), "U_1", &m)
                .unwrap_err()
                .to_string()
        };
        // Each wrote a trace (zoom null, or past 30) that `run` then refused.
        for w in [0.0, -5.0, f64::NAN] {
            let e = convert_with(Mapping {
                width_px: w,
                ..Mapping::default()
            });
            assert!(
                e.starts_with("width_px (--width-px) must be a finite number of pixels above 0"),
                "{e}"
            );
        }
        let e = convert_with(Mapping {
            width_px: 1e9,
            ..Mapping::default()
        });
        assert!(
            e.starts_with("line 2: level 0 maps to a viewport that is not valid"),
            "{e}"
        );
        assert!(e.contains("--width-px"), "{e}");
        let e = convert_with(Mapping {
            target: (0.0, 0.0, 10.0, 100.0),
            ..Mapping::default()
        });
        assert!(e.starts_with("target (--target) 0,0,10,100:"), "{e}");
        let e = convert_with(Mapping {
            target: (10.0, 0.0, 0.0, 10.0),
            ..Mapping::default()
        });
        assert!(e.contains("W < E"), "{e}");
    }
}
