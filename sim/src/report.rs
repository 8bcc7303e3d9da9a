//! Result tables (markdown) and the JSON report.

use serde::Serialize;

use crate::sim::{Metrics, SimConfig};

/// One run: what was replayed, how, and the metrics per policy.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub label: String,
    pub trace: String,
    pub data: String,
    pub sessions: usize,
    pub events: usize,
    pub config: ConfigSummary,
    pub policies: Vec<Metrics>,
}

/// The settings that shape the numbers.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigSummary {
    pub base_ms: f64,
    pub per_item_ms: f64,
    pub tile_zoom: u8,
    pub min_zoom: f64,
    pub max_in_flight: usize,
    pub max_tiles_per_request: usize,
    pub tilewarm_ring: u32,
    pub tilewarm_lookahead_ms: u64,
    pub tilewarm_history_ms: u64,
    pub tilewarm_max_tiles_per_round: usize,
    pub tilewarm_max_lead_viewports: f64,
    /// The data's extent the clients were given, `[west, south, east, north]`; `None`:
    /// the whole world.
    pub bounds: Option<[f64; 4]>,
}

impl ConfigSummary {
    pub fn of(c: &SimConfig) -> ConfigSummary {
        ConfigSummary {
            base_ms: c.base_ms,
            per_item_ms: c.per_item_ms,
            tile_zoom: c.tile_zoom,
            min_zoom: c.min_zoom,
            max_in_flight: c.batch.max_in_flight,
            max_tiles_per_request: c.batch.max_tiles,
            tilewarm_ring: c.tilewarm.ring,
            tilewarm_lookahead_ms: c.tilewarm.lookahead_ms,
            tilewarm_history_ms: c.tilewarm.history_ms,
            tilewarm_max_tiles_per_round: c.tilewarm.max_tiles_per_round,
            tilewarm_max_lead_viewports: c.tilewarm.max_lead_viewports,
            bounds: (c.bounds != tilewarm::cache::WORLD).then_some([
                c.bounds.west,
                c.bounds.south,
                c.bounds.east,
                c.bounds.north,
            ]),
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The markdown table of a report, with a one-line header.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let scored = r.policies.first().map_or(0, |m| m.viewports);
    let empty = r.policies.first().map_or(0, |m| m.viewports_empty);
    let wide = match r.policies.first().map_or(0, |m| m.viewports_too_wide) {
        0 => String::new(),
        n => format!(", {n} too wide to fetch"),
    };
    s.push_str(&format!(
        "**{}** — trace `{}`, data `{}`: {} sessions, {} viewports ({} with data tiles in view, {} below min zoom{}). \
Latency {} ms + {} ms/item; tile zoom {}, min zoom {}, {} requests in flight, {} tiles/request{}.\n\n",
        r.label,
        r.trace,
        r.data,
        r.sessions,
        r.events,
        scored,
        empty,
        wide,
        r.config.base_ms,
        r.config.per_item_ms,
        r.config.tile_zoom,
        r.config.min_zoom,
        r.config.max_in_flight,
        r.config.max_tiles_per_request,
        match r.config.bounds {
            Some([w, s, e, n]) => format!("; data bounds {w}, {s}, {e}, {n} (every policy)"),
            None => String::new(),
        },
    ));
    s.push_str(
        "| policy | viewport hit | item hit | TTC p50 | TTC p90 | abandoned | fg requests | requests | items fetched | MB | prefetched tiles | prefetch waste |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for m in &r.policies {
        let waste = if m.prefetch_tiles == 0 {
            "—".to_string()
        } else {
            format!(
                "{} ({})",
                m.prefetch_wasted,
                pct(m.prefetch_wasted as f64 / m.prefetch_tiles as f64)
            )
        };
        // No item of the data set in any scored view: a rate of nothing, not 0%.
        let item_hit = if m.items_in_view == 0 {
            "—".to_string()
        } else {
            pct(m.item_hit_rate)
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} ms | {} ms | {} | {} | {} | {} | {:.1} | {} | {} |\n",
            m.policy,
            pct(m.viewport_hit_rate),
            item_hit,
            m.ttc_p50_ms,
            m.ttc_p90_ms,
            m.abandoned,
            m.foreground_requests,
            m.requests,
            m.items_fetched,
            m.bytes as f64 / 1e6,
            m.prefetch_tiles,
            waste
        ));
    }
    s.push_str("\nMisses (viewports not complete when shown) by trace action:\n\n| policy |");
    let actions: Vec<&String> = r
        .policies
        .first()
        .map(|m| m.viewports_by_action.keys().collect())
        .unwrap_or_default();
    for a in &actions {
        let n = r.policies[0].viewports_by_action[*a];
        s.push_str(&format!(" {} ({n}) |", if a.is_empty() { "-" } else { a }));
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(actions.len()));
    s.push('\n');
    for m in &r.policies {
        s.push_str(&format!("| {} |", m.policy));
        for a in &actions {
            s.push_str(&format!(
                " {} |",
                m.misses_by_action.get(*a).copied().unwrap_or(0)
            ));
        }
        s.push('\n');
    }
    if r.policies.iter().any(|m| m.idle_requests > 0) {
        let list = |f: fn(&Metrics) -> u64| {
            r.policies
                .iter()
                .map(|m| format!("{} {}", m.policy, f(m)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s.push_str(&format!(
            "\nNot counted above: after each session's last viewport, the page left open fetches \
the view's items again as they expire, for the rest of the run's 10 minutes. Requests: {} \
(foreground: {}); items: {}.\n",
            list(|m| m.idle_requests),
            list(|m| m.idle_foreground_requests),
            list(|m| m.idle_items_fetched),
        ));
    }
    s
}

/// The goals checked against a report (skipped when a policy is missing).
pub fn goals(r: &Report, hit_goal: f64) -> String {
    let get = |n: &str| r.policies.iter().find(|m| m.policy == n);
    let mut s = String::new();
    if let Some(tw) = get("tilewarm") {
        let ok = tw.viewport_hit_rate >= hit_goal;
        s.push_str(&format!(
            "- tilewarm viewport hit rate {} (goal ≥ {}): **{}**\n",
            pct(tw.viewport_hit_rate),
            pct(hit_goal),
            if ok { "met" } else { "missed" }
        ));
        // Issue 17's cost goals, against the production scheme (ring1) and the oracle.
        if let Some(r1) = get("ring1") {
            if tw.foreground_requests == 0 {
                // No ratio to print: every view was ready without asking.
                s.push_str(&format!(
                    "- foreground requests: ring1 {} / tilewarm 0: none at all (goal ≥ 3x fewer): **met**\n",
                    r1.foreground_requests,
                ));
            } else {
                let ratio = r1.foreground_requests as f64 / tw.foreground_requests as f64;
                s.push_str(&format!(
                    "- foreground requests: ring1 {} / tilewarm {} = {:.2}x (goal ≥ 3x): **{}**\n",
                    r1.foreground_requests,
                    tw.foreground_requests,
                    ratio,
                    if ratio >= 3.0 { "met" } else { "missed" }
                ));
            }
            let ratio = tw.requests as f64 / r1.requests.max(1) as f64;
            s.push_str(&format!(
                "- requests: tilewarm {} / ring1 {} = {:.2}x (goal ≤ 1.2x): **{}**\n",
                tw.requests,
                r1.requests,
                ratio,
                if ratio <= 1.2 { "met" } else { "missed" }
            ));
        }
        if let Some(o) = get("oracle") {
            let ratio = tw.items_fetched as f64 / o.items_fetched.max(1) as f64;
            s.push_str(&format!(
                "- items fetched: tilewarm {} / oracle {} = {:.2}x (goal ≤ 1.25x): **{}**\n",
                tw.items_fetched,
                o.items_fetched,
                ratio,
                if ratio <= 1.25 { "met" } else { "missed" }
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Metrics, SimConfig};

    fn report(m: Metrics) -> Report {
        Report {
            label: "t".into(),
            trace: "t.jsonl".into(),
            data: "d.jsonl".into(),
            sessions: 1,
            events: 2,
            config: ConfigSummary::of(&SimConfig::default()),
            policies: vec![m],
        }
    }

    #[test]
    fn an_item_hit_rate_of_no_items_is_a_dash() {
        // Data far from every view (another city): the item hit rate was printed 0.0%,
        // as if every item in view had been missed.
        let m = Metrics {
            policy: "lru".into(),
            viewports: 2,
            hits: 1,
            viewport_hit_rate: 0.5,
            ..Metrics::default()
        };
        let md = markdown(&report(m.clone()));
        assert!(md.contains("| lru | 50.0% | — | "), "{md}");
        let md = markdown(&report(Metrics {
            items_in_view: 10,
            items_shown_at_once: 0,
            ..m
        }));
        assert!(md.contains("| lru | 50.0% | 0.0% | "), "{md}");
    }
}
