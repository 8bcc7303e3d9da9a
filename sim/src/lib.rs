//! tilewarm-sim: replays map viewport traces against a simulated backend to compare
//! prefetch policies built on the tilewarm core. See `sim/README.md`.
//!
//! - [`trace`]: the JSON-lines trace format;
//! - [`synth`]: a seeded generator of synthetic sessions;
//! - [`forecache`]: the converter for the ForeCache user-study logs (real sessions);
//! - [`sim`]: the discrete-event simulation and the policies;
//! - [`report`]: markdown tables and JSON.

pub mod forecache;
pub mod report;
pub mod sim;
pub mod synth;
pub mod trace;
