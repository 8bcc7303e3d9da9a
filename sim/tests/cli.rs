//! The command line as a user meets it: bad input is an error that names what was wrong
//! and what is allowed (exit status 1, or clap's 2), never a panic (101), a silent
//! default or a run over nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VIEW: &str = r#""west":-122.36,"south":47.59,"east":-122.31,"north":47.62,"zoom":14.5"#;

/// A scratch directory of this test binary (one per test name).
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &std::path::Path, file: &str, text: &str) -> String {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A small valid trace: one session of three views.
fn small_trace(dir: &std::path::Path) -> String {
    let lines: Vec<String> = [0, 900, 2000]
        .iter()
        .map(|t| format!(r#"{{"session":"a","t":{t},{VIEW}}}"#))
        .collect();
    write(dir, "small.jsonl", &(lines.join("\n") + "\n"))
}

fn sim<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tilewarm-sim"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `args`, expects a clean failure (status 1) whose message holds each of `wanted`.
#[track_caller]
fn fails_with<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], wanted: &[&str]) {
    let out = sim(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: status {:?}, stderr: {err}",
        out.status
    );
    for w in wanted {
        assert!(err.contains(w), "{args:?}: {w:?} not in: {err}");
    }
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn run_refuses_settings_that_make_no_sense() {
    let dir = scratch("settings");
    let trace = small_trace(&dir);
    let run = |extra: &[&'static str]| -> Vec<String> {
        ["run", "--trace", trace.as_str(), "--policies", "lru"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    // Was a panic ("valid client config").
    fails_with(&run(&["--max-items", "0"]), &["max_items", "at least 1"]);
    // Were clamped to 1 ms, or made every latency NaN, silently.
    fails_with(
        &run(&["--base-ms=-5"]),
        &["--base-ms", "in 0..=3600000", "-5"],
    );
    fails_with(&run(&["--per-item-ms", "NaN"]), &["--per-item-ms", "NaN"]);
    fails_with(&run(&["--per-item-ms", "inf"]), &["--per-item-ms", "inf"]);
    // Past the u64 clock: the answer's time wrapped, so it came back at once (or panicked
    // in a debug build).
    fails_with(&run(&["--base-ms", "1e300"]), &["--base-ms", "an hour"]);
    fails_with(
        &run(&["--slow-share", "0.5", "--slow-ms", "18446744073709551615"]),
        &["--slow-ms", "an hour", "18446744073709551615"],
    );
    // A share: 5 was accepted and every run "missed" it.
    fails_with(&run(&["--hit-goal", "5"]), &["--hit-goal", "0..=1", "5"]);
    // One draw decides both: 0.6 + 0.6 made the slow share 0.4, silently.
    fails_with(
        &run(&["--fail-share", "0.6", "--slow-share", "0.6"]),
        &["--fail-share + --slow-share", "at most 1"],
    );
    fails_with(&run(&["--fail-share", "1.5"]), &["--fail-share", "0..=1"]);
    // Flags that change nothing in the run were ignored.
    fails_with(
        &run(&["--tw-view-ring", "0.5"]),
        &["--tw-view-ring sets the tilewarm policy", "--policies"],
    );
    fails_with(
        &run(&["--slow-ms", "100"]),
        &["--slow-ms", "give --slow-share too"],
    );
    // The same policy twice was run twice, two equal rows.
    fails_with(
        &["run", "--trace", &trace, "--policies", "lru,tilewarm,lru"],
        &["lru twice", "at most once"],
    );
}

#[test]
fn run_refuses_an_empty_data_set() {
    let dir = scratch("empty-data");
    let trace = small_trace(&dir);
    // Both ran, every item hit rate 0 of 0.
    fails_with(
        &["run", "--trace", &trace, "--data", "synthetic:0"],
        &["synthetic:0", "no items", "at least 1"],
    );
    let empty = write(&dir, "none.jsonl", "");
    fails_with(&["run", "--trace", &trace, "--data", &empty], &["no items"]);
}

#[test]
fn a_good_run_still_runs() {
    let dir = scratch("good");
    let trace = small_trace(&dir);
    let out = sim(&[
        "run",
        "--trace",
        &trace,
        "--data",
        "synthetic:2000",
        "--fail-share",
        "0.5",
        "--slow-share",
        "0.5",
        "--hit-goal",
        "1",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in ["none", "lru", "ring1", "tilewarm", "oracle"] {
        assert!(text.contains(&format!("| {p} |")), "{p}: {text}");
    }
}

#[test]
fn run_refuses_an_empty_trace_and_a_session_of_years() {
    let dir = scratch("trace");
    // Both ran: a table of zeros for the empty one; the gap of three years ran for hours
    // (a view at rest wakes at every expiry), and t near u64::MAX overflowed the clock.
    for (file, text) in [("empty.jsonl", ""), ("blank.jsonl", "\n \n")] {
        let p = write(&dir, file, text);
        fails_with(&["run", "--trace", &p], &[&p, "no viewport"]);
    }
    for t in ["100000000000", "18446744073709551615"] {
        let p = write(
            &dir,
            "long.jsonl",
            &format!(
                "{{\"session\":\"a\",\"t\":0,{VIEW}}}\n{{\"session\":\"a\",\"t\":{t},{VIEW}}}\n"
            ),
        );
        fails_with(
            &["run", "--trace", &p, "--policies", "lru"],
            &["line 2: session \"a\"", "at most 604800000 ms (7 days)"],
        );
    }
}

#[test]
fn run_refuses_a_trace_with_nothing_to_score() {
    let dir = scratch("unscored");
    let trace = small_trace(&dir);
    // Every view at zoom 14.5 is below --min-zoom 20: it printed 0.0% hit rates (0 of 0).
    fails_with(
        &["run", "--trace", &trace, "--min-zoom", "20"],
        &[
            "no viewport shows a data tile",
            "3 of 3 are below --min-zoom 20",
        ],
    );
}

#[test]
fn synth_refuses_zero_sessions_or_viewports() {
    // --sessions 0 wrote an empty trace, --events 0 one viewport a session, silently; a
    // product past usize panicked ("capacity overflow").
    fails_with(&["synth", "--sessions", "0"], &["--sessions", "at least 1"]);
    fails_with(&["synth", "--events", "0"], &["--events", "at least 1"]);
    fails_with(
        &[
            "synth",
            "--sessions",
            "10000000000",
            "--events",
            "10000000000",
        ],
        &["at most 10000000 viewports", "10000000000 x 10000000000"],
    );
    let out = sim(&["synth", "--sessions", "2", "--events", "3"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 6);
}

#[test]
fn convert_refuses_a_log_given_twice() {
    let dir = scratch("convert");
    let log = write(
        &dir,
        "U_1.csv",
        "Action,TimeStamp,ZoomLevel,Latitude,Longitude,Angle\n\
         start,2016-06-08 16:46:40.378,0,34.1,-98.6,0\n\
         zoom,2016-06-08 16:46:45.000,1,34.1,-98.6,0\n",
    );
    let other = scratch("convert-other");
    let again = write(&other, "U_1.csv", &std::fs::read_to_string(&log).unwrap());
    // Both became one session "U_1" whose t went back: `run` refused the trace at line 3.
    fails_with(
        &["convert-forecache", &log, &again],
        &[&again, "session \"U_1\" was already read from", &log],
    );
    fails_with(
        &["convert-forecache", "--width-px", "0", &log],
        &["--width-px", "above 0"],
    );
    let out = sim(&["convert-forecache", &log]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

#[test]
fn moves_py_runs_from_any_directory() {
    // sim/moves.py looked for target/release/tilewarm-sim from the current directory, so
    // run from anywhere but the repository's root it died with a Python traceback.
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipping: no python3");
        return;
    }
    let dir = scratch("moves");
    let data = dir.join("data");
    let logs = data.join("forecache-ndsi2d");
    std::fs::create_dir_all(&logs).unwrap();
    for u in 1..=10 {
        write(
            &logs,
            &format!("U_{u}.csv"),
            "Action,TimeStamp,ZoomLevel,Latitude,Longitude,Angle\n\
             start,2016-06-08 16:46:40.378,0,34.1,-98.6,0\n\
             zoom,2016-06-08 16:46:45.000,1,34.1,-98.6,0\n\
             pan,2016-06-08 16:46:47.000,1,34.1,-98.6,90\n",
        );
    }
    write(
        &data,
        "kc_house_data.csv",
        "id,lat,long\n1,47.5,-122.3\n2,47.6,-121.9\n",
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("moves.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&data)
        .current_dir(&dir)
        .env("TILEWARM_SIM", env!("CARGO_BIN_EXE_tilewarm-sim"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("| none | "), "{text}");
    // Without TILEWARM_SIM, from elsewhere: the repository's release build, found from the
    // script's own place (run if built, else named in the message), not from the directory.
    let out = Command::new("python3")
        .arg(&script)
        .arg(&data)
        .current_dir(&dir)
        .env_remove("TILEWARM_SIM")
        .output()
        .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let release = root.join("target").join("release").join("tilewarm-sim");
    if out.status.success() {
        assert!(String::from_utf8_lossy(&out.stdout).contains("| none | "));
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{} is absent", release.display())),
            "{err}"
        );
    }
    // Without the binary: a message saying how to build it, not a traceback.
    let out = Command::new("python3")
        .arg(&script)
        .arg(&data)
        .current_dir(&dir)
        .env("TILEWARM_SIM", dir.join("no-such-binary"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cargo build --release -p tilewarm-sim") && !err.contains("Traceback"),
        "{err}"
    );
}

/// `popular` lists the tiles a share of the sessions viewed, four siblings as their
/// parent; `run --tw-popular-from` limits the tilewarm policy's prefetch to them.
#[test]
fn popular_lists_the_tiles_a_share_of_the_sessions_viewed() {
    let dir = scratch("popular");
    // Two sessions: both view the small trace's box; one also a box far east of it.
    let far = r#""west":-121.96,"south":47.59,"east":-121.91,"north":47.62,"zoom":14.5"#;
    let text = [
        format!(r#"{{"session":"a","t":0,{VIEW}}}"#),
        format!(r#"{{"session":"b","t":0,{VIEW}}}"#),
        format!(r#"{{"session":"b","t":900,{far}}}"#),
    ]
    .join("\n");
    let trace = write(&dir, "two.jsonl", &(text + "\n"));
    let tiles = |share: &str| -> Vec<String> {
        let out = sim(&["popular", "--trace", &trace, "--min-share", share]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let both = tiles("1");
    let either = tiles("0.5");
    assert!(
        !both.is_empty() && either.len() > both.len(),
        "{both:?} {either:?}"
    );
    assert!(both.iter().all(|t| either.contains(t)));
    // Each listed tile covers data tiles of the views (zoom 14, the default).
    let view = tilewarm::tile::TileId::from_lon_lat(-122.335, 47.605, 14).unwrap();
    assert!(both
        .iter()
        .any(|t| t.parse::<tilewarm::tile::TileId>().unwrap().contains(view)));

    fails_with(
        &["popular", "--trace", &trace, "--min-share", "0"],
        &["--min-share", "above 0 and at most 1", "got 0"],
    );
    fails_with(
        &[
            "popular",
            "--trace",
            &dir.join("absent").display().to_string(),
        ],
        &["cannot open"],
    );
    // Every view below --min-zoom: an empty list would stop a page's prefetch.
    fails_with(
        &["popular", "--trace", &trace, "--min-zoom", "15"],
        &[
            "no data tile was in view",
            "2 sessions",
            "--min-zoom 15",
            "nothing to list",
        ],
    );
    // run: the flags need each other and the tilewarm policy.
    let run = |extra: &[&str]| -> Vec<String> {
        ["run", "--trace", trace.as_str(), "--data", "synthetic:2000"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    fails_with(
        &run(&["--tw-popular-min-share", "0.5"]),
        &["--tw-popular-min-share", "give --tw-popular-from too"],
    );
    fails_with(
        &run(&["--policies", "lru", "--tw-popular-from", &trace]),
        &["--tw-popular-from sets the tilewarm policy"],
    );
    fails_with(
        &run(&["--tw-popular-from", &trace, "--tw-popular-min-share", "2"]),
        &["--tw-popular-min-share", "above 0 and at most 1"],
    );
    fails_with(
        &run(&["--tw-popular-from", &trace, "--min-zoom", "15"]),
        &[
            "no data tile was in view",
            "--tw-popular-min-share",
            "nothing to list",
        ],
    );
    let out = sim(&run(&["--tw-popular-from", &trace]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
