//! Benchmark of the streaming validator: generates a CSV (text, label, number columns),
//! validates it from disk in 64 KiB chunks, and prints throughput and peak memory.
//!
//! `cargo run --release -p tailor-datasets --example validate_bench -- [ROWS]`
//! (see `bench/validate_dataset.sh`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::Instant;

use tailor_datasets::{ValidationOptions, validate_table};

const WORDS: [&str; 16] = [
    "contract",
    "patient",
    "the",
    "clause",
    "dose",
    "liability",
    "reported",
    "after",
    "termination",
    "symptoms",
    "party",
    "shall",
    "daily",
    "improved",
    "notice",
    "within",
];
const LABELS: [&str; 5] = [
    "payment",
    "termination",
    "liability",
    "confidentiality",
    "other",
];

/// `VmHWM` (peak resident memory) of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let path =
        std::env::temp_dir().join(format!("tailor-validate-bench-{}.csv", std::process::id()));

    // A deterministic pseudo-random CSV, written straight to disk.
    let mut out = BufWriter::new(File::create(&path)?);
    writeln!(out, "text,label,amount")?;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..rows {
        let words = 8 + next() % 16;
        let text: Vec<&str> = (0..words).map(|_| WORDS[(next() % 16) as usize]).collect();
        let label = LABELS[(next() % 5) as usize];
        let amount = (next() % 100_000) as f64 / 100.0;
        writeln!(out, "\"{} (case {i})\",{label},{amount}", text.join(" "))?;
    }
    out.flush()?;
    drop(out);
    let bytes = std::fs::metadata(&path)?.len();
    let rss_before = peak_rss_kib();

    let start = Instant::now();
    let report = validate_table(File::open(&path)?, ValidationOptions::default())?;
    let seconds = start.elapsed().as_secs_f64();
    let rss_after = peak_rss_kib();
    std::fs::remove_file(&path)?;

    assert_eq!(report.profile.rows, rows);
    let mb = bytes as f64 / 1e6;
    println!(
        "| rows | size (MB) | time (s) | rows/s | MB/s | peak RSS (MiB) | RSS before validating (MiB) | status |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    println!(
        "| {rows} | {mb:.1} | {seconds:.3} | {:.0} | {:.1} | {:.1} | {:.1} | {:?}, {} errors, {} warnings |",
        rows as f64 / seconds,
        mb / seconds,
        rss_after as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        report.status,
        report.error_count,
        report.warnings.len(),
    );
    let types: Vec<String> = report
        .profile
        .columns
        .iter()
        .map(|c| format!("{}: {}", c.name, c.column_type.as_str()))
        .collect();
    println!("\ncolumns: {}", types.join(", "));
    Ok(())
}
