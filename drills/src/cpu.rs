//! CPU time this process spends, in total and by thread name, from the kernel's counters
//! (Linux `/proc/self/stat` and `/proc/self/task/*/stat`), and the share of the machine's
//! CPU time its hypervisor stole meanwhile (`/proc/stat`).
//!
//! Owns reading and differencing those counters, so a benchmark can report how much CPU a
//! run took, which thread took it, and whether the hypervisor took time meanwhile. On a
//! shared 2-core machine wall-clock rates move by 10–30 % between hours; CPU per transfer
//! moves less within an hour, but not across hours: in a slow spell the host's cores
//! themselves are slower, with no steal to show for it (BENCHMARKS.md round 20). It never
//! samples, signals or pins threads. Elsewhere than on Linux every figure is zero (the
//! steal: none).

use std::collections::BTreeMap;

/// Most threads read per snapshot (a process with more reports the first ones only).
const THREADS_MAX: usize = 4_096;

/// The process's CPU counters at one moment, in clock ticks.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    total_ticks: u64,
    by_thread: BTreeMap<String, u64>,
    /// The machine's counters (all CPUs), if `/proc/stat` could be read.
    host: Option<HostTicks>,
}

/// The machine's CPU time in clock ticks, summed over its CPUs (`/proc/stat`'s `cpu` line).
#[derive(Debug, Clone, Copy, PartialEq)]
struct HostTicks {
    /// Every state: user, nice, system, idle, iowait, irq, softirq and steal.
    total: u64,
    /// Time a virtual CPU was ready to run but the hypervisor ran something else.
    steal: u64,
}

/// CPU spent between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CpuUsage {
    /// User plus system seconds of the whole process (threads that ended included).
    pub seconds: f64,
    /// User plus system seconds by thread name, for threads alive at the later snapshot
    /// (threads of one name summed).
    pub by_thread: BTreeMap<String, f64>,
    /// Percent of the machine's CPU time (all CPUs, every process) the hypervisor stole
    /// between the snapshots; `None` where the kernel does not say. A virtual machine whose
    /// host is busy runs slower by about this much, whatever the program does.
    pub host_steal_percent: Option<f64>,
}

/// Reads the counters now.
pub fn snapshot() -> CpuSnapshot {
    let total_ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .map_or(0, |(_, ticks)| ticks);
    let mut by_thread = BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten().take(THREADS_MAX) {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue; // The thread ended meanwhile.
            };
            if let Some((name, ticks)) = parse_stat(&stat) {
                *by_thread.entry(name).or_insert(0) += ticks;
            }
        }
    }
    let host = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| parse_host(&stat));
    CpuSnapshot {
        total_ticks,
        by_thread,
        host,
    }
}

impl CpuSnapshot {
    /// What was spent from `earlier` to this snapshot.
    pub fn since(&self, earlier: &CpuSnapshot) -> CpuUsage {
        let seconds = |ticks: u64| ticks as f64 / ticks_per_second();
        CpuUsage {
            seconds: seconds(self.total_ticks.saturating_sub(earlier.total_ticks)),
            by_thread: self
                .by_thread
                .iter()
                .map(|(name, ticks)| {
                    let before = earlier.by_thread.get(name).copied().unwrap_or(0);
                    (name.clone(), seconds(ticks.saturating_sub(before)))
                })
                .filter(|(_, spent)| *spent > 0.0)
                .collect(),
            host_steal_percent: match (self.host, earlier.host) {
                (Some(now), Some(then)) if now.total > then.total => {
                    let stolen = now.steal.saturating_sub(then.steal);
                    Some(100.0 * stolen as f64 / (now.total - then.total) as f64)
                }
                _ => None,
            },
        }
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: `sysconf` reads a constant of the C library; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The machine's ticks from `/proc/stat`: its first line, `cpu` followed by user, nice,
/// system, idle, iowait, irq, softirq, steal (and guest times, already counted in user).
fn parse_host(stat: &str) -> Option<HostTicks> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields
        .take(8)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let steal = *ticks.get(7)?;
    Some(HostTicks {
        total: ticks.iter().sum(),
        steal,
    })
}

/// A `stat` line's thread name and user plus system ticks. The name sits in parentheses
/// and may itself hold spaces or parentheses, so the fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let mut fields = stat.get(close + 1..)?.split_whitespace();
    // Fields 3.. of proc(5): state is the first after the name; utime and stime are
    // fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_parses_even_with_parentheses_in_the_name() {
        let line = "4242 (actix-rt|system:0) R 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 3 0";
        assert_eq!(
            parse_stat(line),
            Some(("actix-rt|system:0".to_string(), 280))
        );
        let odd = "7 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 0 0";
        assert_eq!(parse_stat(odd), Some(("a (b) c".to_string(), 23)));
        assert_eq!(parse_stat("7 (short) S 1 2"), None);
        assert_eq!(parse_stat("no parentheses"), None);
    }

    #[test]
    fn the_machine_line_gives_total_and_stolen_ticks() {
        let stat =
            "cpu  3676903 21562 380002 2668666 56426 0 11362 3494 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            parse_host(stat),
            Some(HostTicks {
                total: 3_676_903 + 21_562 + 380_002 + 2_668_666 + 56_426 + 11_362 + 3_494,
                steal: 3_494,
            })
        );
        // Kernels before 2.6.11 have no steal field; a per-CPU line first is not the total.
        assert_eq!(parse_host("cpu 1 2 3 4 5 6 7\n"), None);
        assert_eq!(parse_host("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_host("cpu 1 2 x 4 5 6 7 8\n"), None);
        let then = CpuSnapshot {
            host: Some(HostTicks {
                total: 1_000,
                steal: 100,
            }),
            ..CpuSnapshot::default()
        };
        let now = CpuSnapshot {
            host: Some(HostTicks {
                total: 1_400,
                steal: 200,
            }),
            ..CpuSnapshot::default()
        };
        assert_eq!(now.since(&then).host_steal_percent, Some(25.0));
        assert_eq!(then.since(&then).host_steal_percent, None);
        assert_eq!(now.since(&CpuSnapshot::default()).host_steal_percent, None);
    }

    /// A thread that spins shows up under its own name, and the total covers it (fails
    /// if the fields were miscounted: the spin would land in no thread, or count as zero).
    /// The spinner stops once the kernel has counted 0.15 s for it, or after 10 s.
    #[test]
    fn a_busy_thread_is_counted_under_its_name() {
        let before = snapshot();
        let spinner = std::thread::Builder::new()
            .name("cpu-test-spin".into())
            .spawn(|| {
                let started = std::time::Instant::now();
                let mut x = 0u64;
                loop {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                    let own = std::fs::read_to_string("/proc/thread-self/stat")
                        .ok()
                        .and_then(|stat| parse_stat(&stat))
                        .map_or(0, |(_, ticks)| ticks);
                    let counted = own as f64 / ticks_per_second();
                    if counted >= 0.15 || started.elapsed() > std::time::Duration::from_secs(10) {
                        break;
                    }
                }
                // Read while the thread is alive: an ended thread leaves `/proc/self/task`.
                snapshot()
            })
            .expect("spawn");
        let after = spinner.join().expect("spinner");
        let usage = after.since(&before);
        let spun = usage.by_thread.get("cpu-test-spin").copied().unwrap_or(0.0);
        assert!(spun >= 0.1, "the spinner's CPU is counted: {usage:?}");
        // The kernel rounds the process's and each thread's counters separately: a few
        // ticks of slack.
        assert!(
            usage.seconds + 0.05 >= spun,
            "the total covers every thread: {usage:?}"
        );
    }
}
