//! What the driver benches share (each includes this file with `#[path]`): the client's CPU
//! time, and summaries over rounds — the median with the range (min–max), never the best.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::time::Duration;

/// CPU time this process has used so far: user + system, every thread, dead or alive. The
/// clock is `CLOCK_PROCESS_CPUTIME_ID`, the same total `getrusage(RUSAGE_SELF)` gives as
/// `ru_utime + ru_stime`, at nanosecond resolution (`/proc/self/stat` has 10 ms ticks). Zero
/// under valgrind, where CPU time means nothing and rustix's vDSO lookup would crash.
pub(crate) fn process_cpu() -> Duration {
    static VALGRIND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let valgrind =
        *VALGRIND.get_or_init(|| std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains("valgrind")));
    if valgrind {
        return Duration::ZERO;
    }
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Wall-clock and CPU time of one measured phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Phase {
    started: std::time::Instant,
    cpu: Duration,
}

impl Phase {
    pub(crate) fn start() -> Self {
        Self {
            started: std::time::Instant::now(),
            cpu: process_cpu(),
        }
    }

    /// Items per second and client CPU time per item, in µs, since `start`.
    pub(crate) fn per_item(&self, items: usize) -> (f64, f64) {
        let items = items.max(1) as f64;
        let wall = self.started.elapsed().as_secs_f64();
        let cpu = process_cpu().saturating_sub(self.cpu).as_secs_f64();
        (items / wall, cpu * 1e6 / items)
    }
}

/// One value per round.
#[derive(Debug, Clone, Default)]
pub(crate) struct Series(Vec<f64>);

impl Series {
    pub(crate) fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median (the mean of the two middle values for an even count); NaN when empty.
    pub(crate) fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub(crate) fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub(crate) fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// `median (min–max)` with `decimals` digits after the point.
    pub(crate) fn show(&self, decimals: usize) -> String {
        format!(
            "{:.*} ({:.*}–{:.*})",
            decimals,
            self.median(),
            decimals,
            self.min(),
            decimals,
            self.max()
        )
    }

    /// The values in round order, for the record.
    pub(crate) fn list(&self, decimals: usize) -> String {
        let mut out = String::new();
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{v:.decimals$}");
        }
        out
    }
}

/// Round `round` (counted from 0) runs the sides in this order: the first side first in even
/// rounds, second in odd ones (for more than two sides, the order rotates), so that a burst of
/// load or a broker still busy with the previous side's work hits every side alike.
pub(crate) fn order(round: usize, sides: usize) -> Vec<usize> {
    if sides == 2 {
        return if round % 2 == 0 {
            vec![0, 1]
        } else {
            vec![1, 0]
        };
    }
    (0..sides).map(|i| (i + round) % sides).collect()
}

/// The p-th quantile (0.0–1.0) of sorted latencies.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// p50 and p99 of `latencies`, in milliseconds.
pub(crate) fn p50_p99_ms(mut latencies: Vec<Duration>) -> (f64, f64) {
    latencies.sort();
    (
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    )
}

/// The machine's load average (1, 5, 15 minutes), for the record: the benches share two cores
/// with the broker and whatever else runs.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}

/// Runs `work`, failing the bench if it takes longer than `limit`: a broker that stops
/// answering (a connection it dropped without a word) would otherwise hang it for good.
pub(crate) async fn within<T>(
    what: &str,
    limit: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(limit, work).await {
        Ok(done) => done,
        Err(_) => panic!("{what} did not finish within {limit:?}: is the broker answering?"),
    }
}

/// One side's throughput in one round: messages per second and client CPU per message in µs.
pub(crate) type Rate = (f64, f64);

/// The throughput table of a bench, round by round: a plain program and tidings, each side's
/// rate and client CPU per message, and tidings' ratios to the plain program.
#[derive(Debug)]
pub(crate) struct ThroughputTable {
    /// The plain program's name in the output, e.g. `plain lapin`.
    plain: &'static str,
    rate: [Series; 2],
    cpu: [Series; 2],
    ratio: Series,
    cpu_ratio: Series,
}

impl ThroughputTable {
    pub(crate) fn new(plain: &'static str) -> Self {
        Self {
            plain,
            rate: Default::default(),
            cpu: Default::default(),
            ratio: Series::default(),
            cpu_ratio: Series::default(),
        }
    }

    /// Records one round (each side's rate where it ran) and returns its line.
    pub(crate) fn record(
        &mut self,
        round: usize,
        plain: Option<Rate>,
        tidings: Option<Rate>,
    ) -> String {
        let mut line = format!("  round {:>2}:", round + 1);
        for (side, (name, got)) in [(self.plain, plain), ("tidings", tidings)]
            .into_iter()
            .enumerate()
        {
            if let Some((rate, cpu)) = got {
                self.rate[side].push(rate);
                self.cpu[side].push(cpu);
                let _ = write!(line, "  {name} {rate:>6.0} msg/s {cpu:>5.1} µs");
            }
        }
        if let (Some(p), Some(t)) = (plain, tidings) {
            self.ratio.push(t.0 / p.0);
            self.cpu_ratio.push(t.1 / p.1);
            let first = if order(round, 2)[0] == 0 {
                "plain"
            } else {
                "tidings"
            };
            let _ = write!(
                line,
                "  ratio {:.3}  CPU ratio {:.3}  ({first} first)",
                t.0 / p.0,
                t.1 / p.1
            );
        }
        line
    }

    /// The medians with their ranges; `targets` follow the two ratios (e.g. `(target >= 0.95)`).
    pub(crate) fn summary(&self, rounds: usize, targets: [&str; 2]) -> String {
        let mut out = format!("  medians over {rounds} rounds (min–max):");
        for (side, name) in [self.plain, "tidings"].into_iter().enumerate() {
            if !self.rate[side].is_empty() {
                let _ = write!(
                    out,
                    "\n    {name:<12} {} msg/s, CPU {} µs/msg",
                    self.rate[side].show(0),
                    self.cpu[side].show(1)
                );
            }
        }
        if !self.ratio.is_empty() {
            let _ = write!(
                out,
                "\n    throughput ratio tidings / plain {}{}\n    CPU ratio tidings / plain {}{}",
                self.ratio.show(3),
                spaced(targets[0]),
                self.cpu_ratio.show(3),
                spaced(targets[1])
            );
        }
        out
    }
}

/// One program's RPC run: every call's round trip, and client CPU per call in µs (where the
/// bench measures it).
pub(crate) type Calls = (Vec<Duration>, Option<f64>);

/// The RPC table of a bench, round by round: a bare plain program, a plain program with
/// tidings' promises, and tidings — p50, p99, client CPU per call, and tidings' p50 ratios.
#[derive(Debug)]
pub(crate) struct RpcTable {
    /// The three programs' names in the output, bare first, tidings last.
    names: [&'static str; 3],
    p50: [Series; 3],
    p99: [Series; 3],
    cpu: [Series; 3],
    vs_bare: Series,
    vs_same: Series,
}

impl RpcTable {
    pub(crate) fn new(names: [&'static str; 3]) -> Self {
        Self {
            names,
            p50: Default::default(),
            p99: Default::default(),
            cpu: Default::default(),
            vs_bare: Series::default(),
            vs_same: Series::default(),
        }
    }

    /// Records one round (each program's calls where it ran) and returns its line.
    pub(crate) fn record(&mut self, round: usize, got: [Option<Calls>; 3]) -> String {
        let mut line = format!("  round {:>2}:", round + 1);
        let mut p50 = [None; 3];
        for (i, got) in got.into_iter().enumerate() {
            let Some((latencies, cpu)) = got else {
                continue;
            };
            let (a, b) = p50_p99_ms(latencies);
            self.p50[i].push(a);
            self.p99[i].push(b);
            p50[i] = Some(a);
            let _ = write!(line, "  {} {a:.3} / {b:.3}", self.names[i]);
            if let Some(cpu) = cpu {
                self.cpu[i].push(cpu);
                let _ = write!(line, " ({cpu:.0} µs)");
            }
        }
        if let [Some(bare), Some(same), Some(tidings)] = p50 {
            self.vs_bare.push(tidings / bare);
            self.vs_same.push(tidings / same);
            let _ = write!(
                line,
                "  p50 ratio vs {} {:.3}, vs {} {:.3}",
                self.names[0],
                tidings / bare,
                self.names[1],
                tidings / same
            );
        }
        line
    }

    /// The medians with their ranges; `note` follows the ratios (e.g. a target).
    pub(crate) fn summary(&self, rounds: usize, note: &str) -> String {
        let mut out = format!("  medians over {rounds} rounds (min–max):");
        for i in 0..3 {
            if self.p50[i].is_empty() {
                continue;
            }
            let _ = write!(
                out,
                "\n    {:<14} p50 {} ms, p99 {} ms",
                self.names[i],
                self.p50[i].show(3),
                self.p99[i].show(3)
            );
            if !self.cpu[i].is_empty() {
                let _ = write!(out, ", CPU {} µs/call", self.cpu[i].show(0));
            }
        }
        if !self.vs_bare.is_empty() {
            let _ = write!(
                out,
                "\n    p50 ratio tidings / {} {}, tidings / {} {}{}",
                self.names[0],
                self.vs_bare.show(3),
                self.names[1],
                self.vs_same.show(3),
                spaced(note)
            );
        }
        out
    }
}

/// `text` after a space, or nothing.
fn spaced(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" {text}")
    }
}
