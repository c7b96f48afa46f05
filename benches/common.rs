//! Timing helpers shared by the shape benchmarks (`sd15_shapes`, `vqgan_clip_shapes`): median of
//! `runs` after a warm-up, and the process's peak RSS.
#![allow(dead_code)]

use std::time::Instant;

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `f` once to warm up, then `runs` times, and prints the median, minimum and peak RSS.
pub fn time(name: &str, runs: usize, mut f: impl FnMut()) {
    f(); // warm-up (allocations, kernels)
    let times: Vec<f64> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64()
        })
        .collect();
    println!(
        "{name:<28} median {:>8.3} s  (runs {runs}, min {:.3} s)  peak RSS {:.0} MiB",
        median(times.clone()),
        times.iter().cloned().fold(f64::INFINITY, f64::min),
        peak_rss_mib()
    );
}

/// The benchmark's arguments when run by `cargo bench` (with `--bench`), else `None`:
/// `cargo test --all-targets` runs bench binaries too, and minutes of full-size steps do not
/// belong in the test suite. Returns `(names, runs)`.
pub fn bench_args(bench: &str) -> Option<(Vec<String>, usize)> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{bench}: run with `cargo bench -p avatar-core --bench {bench}`");
        return None;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    // What every front end gets from `DeviceSpec::device` on the CPU.
    avatar_core::allocator::tune_for_tensors();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(3);
    Some((args, runs))
}

/// The value after `--flag`, if given.
pub fn option<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

/// Whether `name` was asked for (no names asked: everything). The value after an option
/// (`--runs N`, `--precision P`) is not a name.
pub fn wanted(args: &[String], name: &str) -> bool {
    let names: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || !args[i - 1].starts_with("--")))
        .map(|(_, a)| a)
        .collect();
    names.is_empty() || names.iter().any(|a| *a == name)
}
