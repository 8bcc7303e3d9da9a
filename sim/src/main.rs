//! `tilewarm-sim`: see `sim/README.md`, or run `tilewarm-sim help`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use tilewarm_sim::forecache::{self, Mapping};
use tilewarm_sim::report::{self, ConfigSummary, Report};
use tilewarm_sim::sim::{self, Policy, SimConfig};
use tilewarm_sim::synth::{self, SynthConfig};
use tilewarm_sim::trace;

const HELP: &str = "\
tilewarm-sim: replay map viewport traces against a simulated backend and compare prefetch policies.

USAGE:
  tilewarm-sim synth [--seed N] [--sessions N] [--events N] [--out FILE]
      Writes a synthetic trace (JSON lines) to FILE or stdout.
  tilewarm-sim convert-forecache [--out FILE] [--target W,S,E,N] [--width-px PX] U_1.csv ...
      Converts ForeCache NDSI-2D logs to a trace (mapping: sim/src/forecache.rs).
  tilewarm-sim run --trace FILE [options]
      Replays the trace for each policy and prints a markdown table (or JSON with --json).

RUN OPTIONS:
  --data SPEC            synthetic[:N] (seeded synthetic city, default N=20000) or a .csv
                         (King County layout) / .jsonl file            [synthetic]
  --seed N               seed of the synthetic city and the batcher     [1]
  --policies LIST        comma-separated: none,lru,ring1,tilewarm,oracle [all]
  --label TEXT           name of the run in the report                  [trace file name]
  --json                 print the JSON report instead of the table
  --write-json FILE      also write the JSON report to FILE
  --write-md FILE        also write the markdown table (+ goal check) to FILE
  --hit-goal X           viewport hit-rate goal for the goal check      [0.95]
  --base-ms MS           latency per request                            [60]
  --per-item-ms MS       latency per item in the answer                 [0.05]
  --tile-zoom Z          data tile zoom                                 [14]
  --min-zoom Z           map zoom below which nothing is fetched        [12]
  --in-flight N          requests in flight at most (batch max_in_flight) [4]
  --batch-tiles N        tiles per request at most (batch max_tiles)    [16]
  --tw-ring N            tilewarm policy: ring width                    [1]
  --tw-lookahead-ms MS   tilewarm policy: look-ahead                    [1500]
  --tw-history-ms MS     tilewarm policy: velocity history              [1000]
  --tw-budget N          tilewarm policy: max_tiles_per_round           [32]
  --tw-max-lead X        tilewarm policy: max_lead_viewports            [2]
  --tw-view-ring X       tilewarm policy: view_ring (viewport sizes)    [1]
  --tw-budget-per-visible X  tilewarm policy: budget_per_visible        [8]
";

struct Args(Vec<String>);

impl Args {
    fn flag(&mut self, name: &str) -> bool {
        if let Some(i) = self.0.iter().position(|a| a == name) {
            self.0.remove(i);
            true
        } else {
            false
        }
    }
    fn value(&mut self, name: &str) -> Result<Option<String>, String> {
        let Some(i) = self.0.iter().position(|a| a == name) else {
            return Ok(None);
        };
        if i + 1 >= self.0.len() {
            return Err(format!("{name} needs a value"));
        }
        let v = self.0.remove(i + 1);
        self.0.remove(i);
        Ok(Some(v))
    }
    fn parsed<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>, String> {
        match self.value(name)? {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}: cannot read {v:?}")),
        }
    }
    fn finish(self) -> Result<Vec<String>, String> {
        if let Some(a) = self.0.iter().find(|a| a.starts_with("--")) {
            return Err(format!("unknown option {a} (see tilewarm-sim help)"));
        }
        Ok(self.0)
    }
}

fn output(path: Option<&str>) -> Result<Box<dyn Write>, String> {
    Ok(match path {
        None | Some("-") => Box::new(BufWriter::new(std::io::stdout().lock())),
        Some(p) => Box::new(BufWriter::new(
            File::create(p).map_err(|e| format!("cannot create {p}: {e}"))?,
        )),
    })
}

fn cmd_synth(mut a: Args) -> Result<(), String> {
    let d = SynthConfig::default();
    let cfg = SynthConfig {
        seed: a.parsed("--seed")?.unwrap_or(d.seed),
        sessions: a.parsed("--sessions")?.unwrap_or(d.sessions),
        events_per_session: a.parsed("--events")?.unwrap_or(d.events_per_session),
        ..d
    };
    let out = a.value("--out")?;
    a.finish()?;
    let events = synth::generate(&cfg);
    trace::write(output(out.as_deref())?, &events).map_err(|e| e.to_string())
}

fn cmd_convert(mut a: Args) -> Result<(), String> {
    let mut mapping = Mapping::default();
    if let Some(t) = a.value("--target")? {
        let v: Vec<f64> = t
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("--target: {t:?} is not W,S,E,N"))?;
        if v.len() != 4 || v[0] >= v[2] || v[1] >= v[3] {
            return Err(format!(
                "--target: {t:?} is not W,S,E,N with W < E and S < N"
            ));
        }
        mapping.target = (v[0], v[1], v[2], v[3]);
    }
    if let Some(w) = a.parsed("--width-px")? {
        mapping.width_px = w;
    }
    let out = a.value("--out")?;
    let files = a.finish()?;
    if files.is_empty() {
        return Err("convert-forecache needs at least one U_*.csv".into());
    }
    let mut all = Vec::new();
    for f in &files {
        let session = Path::new(f)
            .file_stem()
            .map_or_else(|| f.clone(), |s| s.to_string_lossy().into_owned());
        let file = File::open(f).map_err(|e| format!("cannot open {f}: {e}"))?;
        let (events, stats) = forecache::convert(BufReader::new(file), &session, &mapping)
            .map_err(|e| format!("{f}: {e}"))?;
        eprintln!(
            "{f}: {} rows, {} pans to the logged focus, {} pans by Angle",
            stats.rows, stats.pans_by_focus, stats.pans_by_angle
        );
        all.extend(events);
    }
    trace::write(output(out.as_deref())?, &all).map_err(|e| e.to_string())
}

fn cmd_run(mut a: Args) -> Result<(), String> {
    let trace_path = a.value("--trace")?.ok_or("run needs --trace FILE")?;
    let data = a.value("--data")?.unwrap_or_else(|| "synthetic".into());
    let seed: u64 = a.parsed("--seed")?.unwrap_or(1);
    let policies: Vec<Policy> = match a.value("--policies")? {
        None => Policy::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|p| {
                Policy::parse(p.trim()).ok_or_else(|| {
                    format!("unknown policy {p:?}; known: none, lru, ring1, tilewarm, oracle")
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let label = a.value("--label")?;
    let json = a.flag("--json");
    let write_json = a.value("--write-json")?;
    let write_md = a.value("--write-md")?;
    let hit_goal: f64 = a.parsed("--hit-goal")?.unwrap_or(0.95);
    let mut cfg = SimConfig::default();
    cfg.batch.seed ^= seed;
    if let Some(v) = a.parsed("--base-ms")? {
        cfg.base_ms = v;
    }
    if let Some(v) = a.parsed("--per-item-ms")? {
        cfg.per_item_ms = v;
    }
    if let Some(v) = a.parsed("--tile-zoom")? {
        cfg.tile_zoom = v;
    }
    if let Some(v) = a.parsed("--min-zoom")? {
        cfg.min_zoom = v;
    }
    if let Some(v) = a.parsed("--in-flight")? {
        cfg.batch.max_in_flight = v;
    }
    if let Some(v) = a.parsed("--batch-tiles")? {
        cfg.batch.max_tiles = v;
    }
    if let Some(v) = a.parsed("--tw-ring")? {
        cfg.tilewarm.ring = v;
    }
    if let Some(v) = a.parsed("--tw-lookahead-ms")? {
        cfg.tilewarm.lookahead_ms = v;
    }
    if let Some(v) = a.parsed("--tw-history-ms")? {
        cfg.tilewarm.history_ms = v;
    }
    if let Some(v) = a.parsed("--tw-budget")? {
        cfg.tilewarm.max_tiles_per_round = v;
    }
    if let Some(v) = a.parsed("--tw-max-lead")? {
        cfg.tilewarm.max_lead_viewports = v;
    }
    if let Some(v) = a.parsed("--tw-view-ring")? {
        cfg.tilewarm.view_ring = v;
    }
    if let Some(v) = a.parsed("--tw-budget-per-visible")? {
        cfg.tilewarm.budget_per_visible = v;
    }
    a.finish()?;
    cfg.batch.validate().map_err(|e| e.to_string())?;
    for p in &policies {
        cfg.planner_for(*p).validate().map_err(|e| e.to_string())?;
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
    let origin = sim::origin_from(items);
    let metrics = sim::run_all(&policies, &sessions, &origin, &cfg);
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

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprint!("{HELP}");
        return ExitCode::from(2);
    }
    let cmd = args.remove(0);
    let a = Args(args);
    let r = match cmd.as_str() {
        "synth" => cmd_synth(a),
        "convert-forecache" => cmd_convert(a),
        "run" => cmd_run(a),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?} (see tilewarm-sim help)")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tilewarm-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
