//! `tilewarm-sim`: see `sim/README.md`, or run `tilewarm-sim help`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use tilewarm_sim::forecache::{self, Mapping};
use tilewarm_sim::report::{self, ConfigSummary, Report};
use tilewarm_sim::sim::{self, Policy, SimConfig};
use tilewarm_sim::synth::{self, SynthConfig};
use tilewarm_sim::trace;

/// Replay map viewport traces against a simulated backend and compare prefetch policies.
#[derive(Parser)]
#[command(name = "tilewarm-sim", arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a synthetic trace (JSON lines) to FILE or stdout.
    Synth(SynthArgs),
    /// Converts ForeCache NDSI-2D logs to a trace (mapping: sim/src/forecache.rs).
    ConvertForecache(ConvertArgs),
    /// Replays the trace for each policy and prints a markdown table (or JSON with --json).
    Run(Box<RunArgs>),
    /// Lists the data tiles that a share of a trace's sessions had in view, as a JSON array
    /// of "z/x/y" for a page's `setPopularTiles` (four siblings written as their parent).
    Popular(PopularArgs),
}

#[derive(Args)]
struct PopularArgs {
    /// The viewports of earlier sessions (JSON lines, as `run` reads them)
    #[arg(long, value_name = "FILE")]
    trace: String,
    /// The share of the sessions that must have viewed a tile, above 0 and at most 1
    /// [default: 0.4]
    #[arg(long, value_name = "SHARE")]
    min_share: Option<f64>,
    /// Data tile zoom, the page's `tileZoom` [default: 14]
    #[arg(long, value_name = "Z")]
    tile_zoom: Option<u8>,
    /// Map zoom below which nothing is in view, the page's `minZoom` [default: 12]
    #[arg(long, value_name = "Z")]
    min_zoom: Option<f64>,
    /// Output file (`-` or absent: stdout)
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
}

#[derive(Args)]
struct SynthArgs {
    /// Seed of the generator [default: 1]
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Sessions to generate, at least 1 [default: 20]
    #[arg(long, value_name = "N")]
    sessions: Option<usize>,
    /// Viewports per session, at least 1 (sessions x events at most 10,000,000)
    /// [default: 300]
    #[arg(long, value_name = "N")]
    events: Option<usize>,
    /// Output file (`-` or absent: stdout)
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
}

#[derive(Args)]
struct ConvertArgs {
    /// The box the study's extent is mapped onto, W,S,E,N [default: the King County homes]
    #[arg(long, value_name = "W,S,E,N", value_parser = parse_target, allow_hyphen_values = true)]
    target: Option<(f64, f64, f64, f64)>,
    /// Viewport width in pixels [default: 1024]
    #[arg(long, value_name = "PX")]
    width_px: Option<f64>,
    /// Output file (`-` or absent: stdout)
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
    /// ForeCache logs (U_1.csv ...); each file is one session
    #[arg(required = true, value_name = "U_N.csv")]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// The trace to replay (JSON lines, sim/README.md)
    #[arg(long, value_name = "FILE")]
    trace: String,
    /// synthetic[:N] (seeded synthetic city, N=20000 by default) or a .csv (King County
    /// layout) / .jsonl file
    #[arg(long, value_name = "SPEC", default_value = "synthetic")]
    data: String,
    /// Seed of the synthetic city and the batcher
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Comma-separated policies, each at most once: none,lru,ring1,tilewarm,oracle
    /// [default: all]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_policy)]
    policies: Option<Vec<Policy>>,
    /// Name of the run in the report [default: the trace file name]
    #[arg(long, value_name = "TEXT")]
    label: Option<String>,
    /// Print the JSON report instead of the table
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to FILE
    #[arg(long, value_name = "FILE")]
    write_json: Option<String>,
    /// Also write the markdown table (+ goal check) to FILE
    #[arg(long, value_name = "FILE")]
    write_md: Option<String>,
    /// Viewport hit-rate goal for the goal check, a share in 0..=1
    #[arg(long, value_name = "X", default_value_t = 0.95)]
    hit_goal: f64,
    /// Latency per request, ms [default: 60]
    #[arg(long, value_name = "MS")]
    base_ms: Option<f64>,
    /// Latency per item in the answer, ms [default: 0.05]
    #[arg(long, value_name = "MS")]
    per_item_ms: Option<f64>,
    /// Data tile zoom [default: 14]
    #[arg(long, value_name = "Z")]
    tile_zoom: Option<u8>,
    /// Map zoom below which nothing is fetched [default: 12]
    #[arg(long, value_name = "Z")]
    min_zoom: Option<f64>,
    /// Requests in flight at most (batch max_in_flight) [default: 4]
    #[arg(long, value_name = "N")]
    in_flight: Option<usize>,
    /// Tiles per request at most (batch max_tiles) [default: 16]
    #[arg(long, value_name = "N")]
    batch_tiles: Option<usize>,
    /// Share of requests the backend fails with a 503, in 0..=1 (with --slow-share at most
    /// 1 in all) [default: 0]
    #[arg(long, value_name = "X")]
    fail_share: Option<f64>,
    /// Share of requests answered --slow-ms late, in 0..=1 [default: 0]
    #[arg(long, value_name = "X")]
    slow_share: Option<f64>,
    /// How late a slow answer is, ms [default: 5000]
    #[arg(long, value_name = "MS")]
    slow_ms: Option<u64>,
    /// Coarsest request tile, in zooms above the data zoom (batch coalesce_levels) [default: 3]
    #[arg(long, value_name = "N")]
    coalesce_levels: Option<u8>,
    /// Share (percent) of a coarse tile's data tiles that must be queued for it to be asked
    /// for (batch coalesce_min_share) [default: 50]
    #[arg(long, value_name = "PCT")]
    coalesce_min_share: Option<u8>,
    /// The data's extent every policy's client is given (CacheConfig bounds): none, data
    /// (the data set's own extent), server (that extent declared by the backend with every
    /// answer, as a server's --bounds: adopted with the first) or WEST,SOUTH,EAST,NORTH
    /// [default: none]
    #[arg(long, value_name = "SPEC")]
    bounds: Option<String>,
    /// Most items each policy's client holds (CacheConfig max_items) [default: 50000]
    #[arg(long, value_name = "N")]
    max_items: Option<usize>,
    /// tilewarm policy: ring width [default: 1]
    #[arg(long, value_name = "N")]
    tw_ring: Option<u32>,
    /// tilewarm policy: look-ahead, ms (0 = off) [default: 0]
    #[arg(long, value_name = "MS")]
    tw_lookahead_ms: Option<u64>,
    /// tilewarm policy: velocity history, ms [default: 1000]
    #[arg(long, value_name = "MS")]
    tw_history_ms: Option<u64>,
    /// tilewarm policy: max_tiles_per_round [default: 32]
    #[arg(long, value_name = "N")]
    tw_budget: Option<usize>,
    /// tilewarm policy: max_lead_viewports [default: 2]
    #[arg(long, value_name = "X")]
    tw_max_lead: Option<f64>,
    /// tilewarm policy: view_ring, in viewport sizes [default: 1]
    #[arg(long, value_name = "X")]
    tw_view_ring: Option<f64>,
    /// tilewarm policy: budget_per_visible [default: 8]
    #[arg(long, value_name = "X")]
    tw_budget_per_visible: Option<f64>,
    /// tilewarm policy: align_levels (0 = off) [default: 2]
    #[arg(long, value_name = "N")]
    tw_align_levels: Option<u8>,
    /// tilewarm policy: warm_below_min_zoom, zoom levels (0 = off) [default: 0]
    #[arg(long, value_name = "X")]
    tw_warm_below: Option<f64>,
    /// tilewarm policy: prefetch only the data tiles that at least --tw-popular-min-share of
    /// this trace's sessions had in view (Planner::set_popular): earlier sessions, not the
    /// ones scored [default: no limit]
    #[arg(long, value_name = "TRACE")]
    tw_popular_from: Option<String>,
    /// tilewarm policy: the share of --tw-popular-from's sessions that must have viewed a
    /// tile, above 0 and at most 1 [default: 0.4]
    #[arg(long, value_name = "SHARE")]
    tw_popular_min_share: Option<f64>,
}

fn parse_policy(p: &str) -> Result<Policy, String> {
    Policy::parse(p.trim())
        .ok_or_else(|| format!("unknown policy {p:?}; known: none, lru, ring1, tilewarm, oracle"))
}

fn parse_target(t: &str) -> Result<(f64, f64, f64, f64), String> {
    let v: Vec<f64> = t
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{t:?} is not W,S,E,N"))?;
    if v.len() != 4 || v[0] >= v[2] || v[1] >= v[3] {
        return Err(format!("{t:?} is not W,S,E,N with W < E and S < N"));
    }
    Ok((v[0], v[1], v[2], v[3]))
}

fn output(path: Option<&str>) -> Result<Box<dyn Write>, String> {
    Ok(match path {
        None | Some("-") => Box::new(BufWriter::new(std::io::stdout().lock())),
        Some(p) => Box::new(BufWriter::new(
            File::create(p).map_err(|e| format!("cannot create {p}: {e}"))?,
        )),
    })
}

fn cmd_synth(a: SynthArgs) -> Result<(), String> {
    for (flag, n) in [("--sessions", a.sessions), ("--events", a.events)] {
        if n == Some(0) {
            return Err(format!(
                "{flag} must be at least 1, got 0 (a session starts with one viewport)"
            ));
        }
    }
    // The trace is built in memory before it is written (about 200 bytes a viewport).
    const MAX_VIEWPORTS: usize = 10_000_000;
    let d = SynthConfig::default();
    let (sessions, events) = (
        a.sessions.unwrap_or(d.sessions),
        a.events.unwrap_or(d.events_per_session),
    );
    if sessions.saturating_mul(events) > MAX_VIEWPORTS {
        return Err(format!(
            "--sessions x --events must be at most {MAX_VIEWPORTS} viewports, got {sessions} x {events}"
        ));
    }
    let cfg = SynthConfig {
        seed: a.seed.unwrap_or(d.seed),
        sessions,
        events_per_session: events,
        ..d
    };
    let events = synth::generate(&cfg);
    trace::write(output(a.out.as_deref())?, &events).map_err(|e| e.to_string())
}

fn cmd_convert(a: ConvertArgs) -> Result<(), String> {
    let mut mapping = Mapping::default();
    if let Some(t) = a.target {
        mapping.target = t;
    }
    if let Some(w) = a.width_px {
        mapping.width_px = w;
    }
    mapping.validate().map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    for path in &a.files {
        let f = path.display().to_string();
        let session = path
            .file_stem()
            .map_or_else(|| f.clone(), |s| s.to_string_lossy().into_owned());
        // Two logs of one name would be one session whose time goes back.
        if let Some(prev) = seen.insert(session.clone(), f.clone()) {
            return Err(format!(
                "{f}: session {session:?} was already read from {prev}; the session is named \
                 after the file, so give each log once, under its own name"
            ));
        }
        let file = File::open(path).map_err(|e| format!("cannot open {f}: {e}"))?;
        let (events, stats) = forecache::convert(BufReader::new(file), &session, &mapping)
            .map_err(|e| format!("{f}: {e}"))?;
        eprintln!(
            "{f}: {} rows, {} pans to the logged focus, {} pans by Angle",
            stats.rows, stats.pans_by_focus, stats.pans_by_angle
        );
        all.extend(events);
    }
    trace::write(output(a.out.as_deref())?, &all).map_err(|e| e.to_string())
}

fn cmd_run(a: RunArgs) -> Result<(), String> {
    let RunArgs {
        trace: trace_path,
        data,
        seed,
        policies,
        label,
        json,
        write_json,
        write_md,
        hit_goal,
        ..
    } = a;
    let policies = policies.unwrap_or_else(|| Policy::ALL.to_vec());
    // A flag that changes nothing in this run is a mistake to say, not to ignore.
    let tw_flags = [
        ("--tw-ring", a.tw_ring.is_some()),
        ("--tw-lookahead-ms", a.tw_lookahead_ms.is_some()),
        ("--tw-history-ms", a.tw_history_ms.is_some()),
        ("--tw-budget", a.tw_budget.is_some()),
        ("--tw-max-lead", a.tw_max_lead.is_some()),
        ("--tw-view-ring", a.tw_view_ring.is_some()),
        ("--tw-budget-per-visible", a.tw_budget_per_visible.is_some()),
        ("--tw-align-levels", a.tw_align_levels.is_some()),
        ("--tw-warm-below", a.tw_warm_below.is_some()),
        ("--tw-popular-from", a.tw_popular_from.is_some()),
    ];
    if let Some((flag, _)) = tw_flags.iter().find(|(_, set)| *set) {
        if !policies.contains(&Policy::Tilewarm) {
            return Err(format!(
                "{flag} sets the tilewarm policy, which --policies leaves out; add tilewarm \
                 to --policies or drop {flag}"
            ));
        }
    }
    if a.slow_ms.is_some() && a.slow_share.is_none_or(|x| x == 0.0) {
        return Err(
            "--slow-ms says how late a slow answer is, but no answer is slow: give \
             --slow-share too (a share in 0..=1 above 0)"
                .to_string(),
        );
    }
    let mut cfg = SimConfig::default();
    cfg.batch.seed ^= seed;
    fn set<T>(field: &mut T, v: Option<T>) {
        if let Some(v) = v {
            *field = v;
        }
    }
    set(&mut cfg.base_ms, a.base_ms);
    set(&mut cfg.per_item_ms, a.per_item_ms);
    set(&mut cfg.tile_zoom, a.tile_zoom);
    set(&mut cfg.min_zoom, a.min_zoom);
    set(&mut cfg.batch.max_in_flight, a.in_flight);
    set(&mut cfg.batch.max_tiles, a.batch_tiles);
    set(&mut cfg.batch.coalesce_levels, a.coalesce_levels);
    set(&mut cfg.batch.coalesce_min_share, a.coalesce_min_share);
    set(&mut cfg.fail_share, a.fail_share);
    set(&mut cfg.slow_share, a.slow_share);
    set(&mut cfg.slow_ms, a.slow_ms);
    set(&mut cfg.max_items, a.max_items);
    set(&mut cfg.tilewarm.ring, a.tw_ring);
    set(&mut cfg.tilewarm.lookahead_ms, a.tw_lookahead_ms);
    set(&mut cfg.tilewarm.history_ms, a.tw_history_ms);
    set(&mut cfg.tilewarm.max_tiles_per_round, a.tw_budget);
    set(&mut cfg.tilewarm.max_lead_viewports, a.tw_max_lead);
    set(&mut cfg.tilewarm.view_ring, a.tw_view_ring);
    set(
        &mut cfg.tilewarm.budget_per_visible,
        a.tw_budget_per_visible,
    );
    set(&mut cfg.tilewarm.align_levels, a.tw_align_levels);
    set(&mut cfg.tilewarm.warm_below_min_zoom, a.tw_warm_below);
    if a.tw_popular_min_share.is_some() && a.tw_popular_from.is_none() {
        return Err(
            "--tw-popular-min-share says which tiles of --tw-popular-from's sessions \
                    are popular: give --tw-popular-from too"
                .to_string(),
        );
    }
    if !(0.0..=1.0).contains(&hit_goal) {
        return Err(format!(
            "--hit-goal must be a share in 0..=1, got {hit_goal}"
        ));
    }
    if let Some((i, p)) = policies
        .iter()
        .enumerate()
        .find(|&(i, p)| policies[..i].contains(p))
    {
        return Err(format!(
            "--policies names {} twice (at {} and {}); name each at most once",
            p.name(),
            policies.iter().position(|q| q == p).unwrap_or(0) + 1,
            i + 1
        ));
    }
    cfg.validate(&policies)?;
    if let Some(from) = &a.tw_popular_from {
        let share = a.tw_popular_min_share.unwrap_or(0.4);
        let planner = tilewarm::planner::Planner::new(cfg.planner_for(Policy::Tilewarm))
            .map_err(|e| e.to_string())?;
        let (_, popular) = popular_tiles(from, &planner, share, "--tw-popular-min-share")?;
        // As `popular` writes it for a page.
        cfg.popular = Some(popular.compact());
    }
    let file = File::open(&trace_path).map_err(|e| format!("cannot open {trace_path}: {e}"))?;
    let sessions = trace::parse(BufReader::new(file)).map_err(|e| format!("{trace_path}: {e}"))?;
    let items = if let Some(rest) = data.strip_prefix("synthetic") {
        let n: usize = match rest.strip_prefix(':') {
            Some(n) => n
                .parse()
                .map_err(|_| format!("--data: bad count in {data:?}"))?,
            None if rest.is_empty() => 20_000,
            None => return Err(format!("--data: {data:?} is not synthetic[:N] or a file")),
        };
        tilewarm::dataset::synthetic_city(seed, n)
    } else {
        tilewarm::dataset::load_path(Path::new(&data)).map_err(|e| format!("{data}: {e}"))?
    };
    if items.is_empty() {
        return Err(format!(
            "--data {data}: the data set holds no items; every hit rate would be of nothing \
             (give synthetic:N with N at least 1, or a file with at least one item)"
        ));
    }
    let origin = sim::origin_from(items);
    // The data set's own extent (the world when it is empty).
    let extent = origin.extent().unwrap_or(tilewarm::cache::WORLD);
    match a.bounds.as_deref() {
        None | Some("none") => {}
        Some("data") => cfg.bounds = extent,
        Some("server") => cfg.declared_bounds = Some(extent),
        Some(spec) => {
            cfg.bounds = tilewarm::cache::parse_bounds(spec).map_err(|e| {
                format!("--bounds must be none, data, server or WEST,SOUTH,EAST,NORTH: {e}")
            })?
        }
    };
    let metrics = sim::run_all(&policies, &sessions, &origin, &cfg);
    // Every policy sees the same viewports; with none scored every rate is 0 of 0.
    if let Some(m) = metrics.first().filter(|m| m.viewports == 0) {
        return Err(format!(
            "{trace_path}: no viewport shows a data tile, so there is nothing to score: \
             {} of {} are below --min-zoom {} and {} cover more than {} data tiles at \
             --tile-zoom {} (lower --min-zoom, or check the trace's zooms and boxes)",
            m.viewports_empty,
            m.viewports_empty + m.viewports_too_wide,
            cfg.min_zoom,
            m.viewports_too_wide,
            cfg.tilewarm.max_visible_tiles,
            cfg.tile_zoom,
        ));
    }
    let report = Report {
        label: label.unwrap_or_else(|| trace_path.clone()),
        trace: trace_path,
        data,
        sessions: sessions.len(),
        events: sessions.iter().map(|s| s.events.len()).sum(),
        config: ConfigSummary::of(&cfg),
        policies: metrics,
    };
    let json_text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let md = format!(
        "{}\n{}",
        report::markdown(&report),
        report::goals(&report, hit_goal)
    );
    if let Some(p) = write_json {
        std::fs::write(&p, &json_text).map_err(|e| format!("cannot write {p}: {e}"))?;
    }
    if let Some(p) = write_md {
        std::fs::write(&p, &md).map_err(|e| format!("cannot write {p}: {e}"))?;
    }
    let mut out = output(None)?;
    let text = if json { json_text } else { md };
    writeln!(out, "{text}").map_err(|e| e.to_string())
}

/// The data tiles at least `share` of the sessions of the trace at `path` had in view, by
/// `planner`'s visible tiles, with the counts; `share_flag` names the share's flag in
/// errors. An empty list is an error: it would stop a page's prefetch altogether.
fn popular_tiles(
    path: &str,
    planner: &tilewarm::planner::Planner,
    share: f64,
    share_flag: &str,
) -> Result<
    (
        tilewarm::planner::ViewCounts,
        tilewarm::planner::PopularTiles,
    ),
    String,
> {
    let file = File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
    let sessions = trace::parse(BufReader::new(file)).map_err(|e| format!("{path}: {e}"))?;
    let counts = sim::view_counts(planner, &sessions);
    let popular = counts
        .popular(share)
        .map_err(|e| format!("{share_flag}: {e}"))?;
    if popular.is_empty() {
        return Err(format!(
            "no data tile was in view in at least {share} of the {} sessions of {path} (at \
             --tile-zoom {} and --min-zoom {}): nothing to list; give a lower {share_flag}, or \
             the page's --min-zoom if views below the default 12 show data",
            counts.sessions(),
            planner.config().tile_zoom,
            planner.config().min_zoom
        ));
    }
    Ok((counts, popular))
}

fn cmd_popular(a: PopularArgs) -> Result<(), String> {
    let d = SimConfig::default();
    let planner = tilewarm::planner::Planner::new(tilewarm::planner::PlannerConfig {
        tile_zoom: a.tile_zoom.unwrap_or(d.tile_zoom),
        min_zoom: a.min_zoom.unwrap_or(d.min_zoom),
        ..tilewarm::planner::PlannerConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let (counts, popular) = popular_tiles(
        &a.trace,
        &planner,
        a.min_share.unwrap_or(0.4),
        "--min-share",
    )?;
    let names: Vec<String> = popular.compact().iter().map(|t| t.to_string()).collect();
    let mut out = output(a.out.as_deref())?;
    serde_json::to_writer(&mut out, &names).map_err(|e| e.to_string())?;
    writeln!(out).map_err(|e| e.to_string())?;
    eprintln!(
        "tilewarm-sim popular: {} sessions, {} data tiles viewed, {} popular, listed as {}",
        counts.sessions(),
        counts.popular(f64::MIN_POSITIVE).map_or(0, |p| p.len()),
        popular.len(),
        names.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Synth(a) => cmd_synth(a),
        Command::ConvertForecache(a) => cmd_convert(a),
        Command::Run(a) => cmd_run(*a),
        Command::Popular(a) => cmd_popular(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tilewarm-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
