//! A seeded generator of synthetic navigation sessions over a city.
//!
//! A session is a sequence of gestures separated by think time (log-normal, median
//! `think_median_ms`). Each gesture emits viewport events the way a map page reports
//! `move` events (about every 100 ms while the map moves):
//! - **pan** (`pan_share`): a drag at 0.6–2 viewport widths per second for 3–6 steps, then
//!   a momentum fling decaying by 15% per step for 2–6 more steps. The direction keeps the
//!   previous pan's heading ± 35° with probability `keep_heading` (people browse along a
//!   street or coast), otherwise it is uniform;
//! - **zoom** (`zoom_share`): one level in (55%) or out, in four quarter-level steps 80 ms
//!   apart, around a point up to 0.3 viewports from the centre;
//! - **jump** (the rest): a search or a link: a new place in the city at zoom 13.5–15.5.
//!
//! Sessions stay within `radius_tiles` data tiles (zoom 14) of the centre (a pan that would
//! leave turns back), and between zoom 12.5 and 17. The viewport is `width_px` x
//! `height_px` at 256-pixel tiles. Same config, same trace.

use tilewarm::tile::{project, unproject, TilePoint};

use crate::trace::TraceEvent;

/// splitmix64: small, fast, deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x51d0_7ace_5eed_0001)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Integer in lo..=hi.
    pub fn int(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Generator settings; see the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    pub seed: u64,
    pub sessions: usize,
    /// Viewport events per session.
    pub events_per_session: usize,
    /// City centre (lon, lat); default downtown Seattle, where the data sets are.
    pub centre: (f64, f64),
    /// How far sessions roam, in zoom-14 tiles (default 12, about 20 km).
    pub radius_tiles: f64,
    pub width_px: f64,
    pub height_px: f64,
    pub think_median_ms: f64,
    pub pan_share: f64,
    pub zoom_share: f64,
    pub keep_heading: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 1,
            sessions: 20,
            events_per_session: 300,
            centre: tilewarm::dataset::CITY_CENTRE,
            radius_tiles: 12.0,
            width_px: 1024.0,
            height_px: 768.0,
            think_median_ms: 1500.0,
            pan_share: 0.70,
            zoom_share: 0.25,
            keep_heading: 0.6,
        }
    }
}

/// The event for a viewport of `w_px` x `h_px` centred at world point `c` (zoom-0 units).
pub fn event_at(
    session: &str,
    t: u64,
    c: TilePoint,
    zoom: f64,
    w_px: f64,
    h_px: f64,
    action: &str,
) -> TraceEvent {
    let scale = 256.0 * zoom.exp2();
    let (hw, hh) = (w_px / 2.0 / scale, h_px / 2.0 / scale);
    let (west, north) = unproject(
        TilePoint {
            x: c.x - hw,
            y: c.y - hh,
        },
        0,
    );
    let (east, south) = unproject(
        TilePoint {
            x: c.x + hw,
            y: c.y + hh,
        },
        0,
    );
    TraceEvent {
        session: session.to_string(),
        t,
        west,
        south,
        east,
        north,
        zoom,
        action: Some(action.to_string()),
    }
}

/// Generates the trace (sessions one after another).
pub fn generate(cfg: &SynthConfig) -> Vec<TraceEvent> {
    let mut rng = Rng::new(cfg.seed);
    let home = project(cfg.centre.0, cfg.centre.1, 0).unwrap_or(TilePoint { x: 0.5, y: 0.5 });
    let radius = cfg.radius_tiles / 16384.0;
    // Reserve for the usual sizes only: a product past usize (or memory) is the caller's
    // to refuse, not an allocation to panic on.
    let mut out = Vec::with_capacity(
        cfg.sessions
            .saturating_mul(cfg.events_per_session)
            .min(1 << 20),
    );
    for s in 0..cfg.sessions {
        let name = format!("synth-{}-{s}", cfg.seed);
        let random_place = |rng: &mut Rng| {
            let r = radius * 0.8 * rng.unit().sqrt();
            let a = rng.range(0.0, std::f64::consts::TAU);
            TilePoint {
                x: home.x + r * a.cos(),
                y: home.y + r * a.sin(),
            }
        };
        let mut c = random_place(&mut rng);
        let mut zoom = (rng.range(13.5, 15.5) * 4.0).round() / 4.0;
        let mut t: u64 = 0;
        let mut heading = rng.range(0.0, std::f64::consts::TAU);
        let mut n = 0;
        let emit = |out: &mut Vec<TraceEvent>, t: u64, c: TilePoint, z: f64, a: &str| {
            out.push(event_at(&name, t, c, z, cfg.width_px, cfg.height_px, a));
        };
        emit(&mut out, t, c, zoom, "start");
        n += 1;
        while n < cfg.events_per_session {
            let think = (cfg.think_median_ms * (0.8 * rng.normal()).exp()).clamp(300.0, 15_000.0);
            t += think as u64;
            let pick = rng.unit();
            if pick < cfg.pan_share {
                if rng.unit() >= cfg.keep_heading {
                    heading = rng.range(0.0, std::f64::consts::TAU);
                } else {
                    heading += rng.range(-0.6, 0.6);
                }
                let mut speed = rng.range(0.6, 2.0); // viewport widths per second
                let drag = rng.int(3, 6);
                let fling = rng.int(2, 6);
                for step in 0..drag + fling {
                    if n >= cfg.events_per_session {
                        break;
                    }
                    if step >= drag {
                        speed *= 0.85;
                    }
                    let vw = cfg.width_px / (256.0 * zoom.exp2());
                    let d = speed * vw * 0.1;
                    let mut next = TilePoint {
                        x: c.x + d * heading.cos(),
                        y: c.y + d * heading.sin(),
                    };
                    if ((next.x - home.x).powi(2) + (next.y - home.y).powi(2)).sqrt() > radius {
                        // Turn back towards the centre.
                        heading = (home.y - c.y).atan2(home.x - c.x) + rng.range(-0.5, 0.5);
                        next = TilePoint {
                            x: c.x + d * heading.cos(),
                            y: c.y + d * heading.sin(),
                        };
                    }
                    c = next;
                    t += 100;
                    emit(&mut out, t, c, zoom, "pan");
                    n += 1;
                }
            } else if pick < cfg.pan_share + cfg.zoom_share {
                let zoom_in = rng.unit() < 0.55;
                let dz: f64 = if (zoom_in && zoom < 16.5) || zoom <= 13.0 {
                    0.25
                } else {
                    -0.25
                };
                let vw = cfg.width_px / (256.0 * zoom.exp2());
                let vh = cfg.height_px / (256.0 * zoom.exp2());
                let focus = TilePoint {
                    x: c.x + rng.range(-0.3, 0.3) * vw,
                    y: c.y + rng.range(-0.3, 0.3) * vh,
                };
                for _ in 0..4 {
                    if n >= cfg.events_per_session {
                        break;
                    }
                    // Keep the focus point still on screen while the scale changes.
                    let k = (-dz).exp2();
                    c = TilePoint {
                        x: focus.x + (c.x - focus.x) * k,
                        y: focus.y + (c.y - focus.y) * k,
                    };
                    zoom = (zoom + dz).clamp(12.5, 17.0);
                    t += 80;
                    emit(&mut out, t, c, zoom, "zoom");
                    n += 1;
                }
            } else {
                c = random_place(&mut rng);
                zoom = (rng.range(13.5, 15.5) * 4.0).round() / 4.0;
                emit(&mut out, t, c, zoom, "jump");
                n += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_trace_other_seed_other_trace() {
        let cfg = SynthConfig {
            sessions: 3,
            events_per_session: 120,
            ..SynthConfig::default()
        };
        let a = generate(&cfg);
        let b = generate(&cfg);
        assert_eq!(a, b);
        assert_eq!(a.len(), 360);
        let c = generate(&SynthConfig { seed: 2, ..cfg });
        assert_ne!(a, c);
    }

    #[test]
    fn events_are_valid_ordered_and_stay_in_the_city() {
        let cfg = SynthConfig {
            sessions: 4,
            events_per_session: 200,
            ..SynthConfig::default()
        };
        let events = generate(&cfg);
        let mut buf = Vec::new();
        crate::trace::write(&mut buf, &events).unwrap();
        let sessions = crate::trace::parse(buf.as_slice()).unwrap();
        assert_eq!(sessions.len(), 4);
        let (clon, clat) = cfg.centre;
        for s in &sessions {
            assert_eq!(s.events.len(), 200);
            for (_, vp) in &s.events {
                assert!((12.5..=17.0).contains(&vp.zoom));
                let (lon, lat) = vp.bbox.centre();
                assert!(
                    (lon - clon).abs() < 0.4 && (lat - clat).abs() < 0.3,
                    "{lon} {lat}"
                );
            }
        }
        let actions: std::collections::HashSet<_> =
            events.iter().filter_map(|e| e.action.clone()).collect();
        for a in ["start", "pan", "zoom", "jump"] {
            assert!(actions.contains(a), "{a} missing");
        }
    }
}
