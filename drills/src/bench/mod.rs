//! Benchmark harnesses. [`engine`]: the ledger core in one process. [`dcs`]: a store and
//! three DC node processes on loopback, through the router's routing core. [`http`]: the router's
//! HTTP API from outside. [`runs`]: several runs' reports summed up as medians.

pub mod dcs;
pub mod engine;
pub mod http;
pub mod runs;
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

/// Calls `make` with `prefix` followed by `n` in decimal, written on the stack (the
/// generator runs on the same two cores as the ledger: what it spends is taken from the
/// measurement, and `format!` allocated three strings per transfer).
pub(crate) fn numbered<R>(prefix: &str, n: u64, make: impl FnOnce(&str) -> R) -> R {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n);
    let mut bytes = [0u8; 32];
    let len = prefix.len() + digits.len();
    assert!(len <= bytes.len(), "benchmark id prefixes are short");
    bytes[..prefix.len()].copy_from_slice(prefix.as_bytes());
    bytes[prefix.len()..len].copy_from_slice(digits.as_bytes());
    make(std::str::from_utf8(&bytes[..len]).expect("ASCII"))
}
