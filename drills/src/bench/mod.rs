//! Benchmark harnesses. [`engine`]: the ledger core in one process. [`dcs`]: a store and
//! three DC node processes on loopback, through the router's routing core. [`http`]: the router's
//! HTTP API from outside.

pub mod dcs;
pub mod engine;
pub mod http;
pub mod shift_load;

/// The benchmarks' progress bar over `total` transfers (hidden when `visible` is false,
/// e.g. with `--json`).
pub fn transfers_bar(total: u64, visible: bool) -> indicatif::ProgressBar {
    let bar = if visible {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos}/{len} transfers {per_sec} [{elapsed_precise}] {wide_bar}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
