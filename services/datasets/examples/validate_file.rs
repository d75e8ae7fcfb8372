//! Validates one upload (CSV, TSV, JSONL or ZIP) and prints the report as JSON, or the
//! fatal error. `cargo run -p tailor-datasets --example validate_file -- PATH`

use std::fs::File;

use tailor_datasets::{ValidationOptions, validate_upload};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: validate_file PATH");
        std::process::exit(2);
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(2);
        }
    };
    match validate_upload(file, Some(&path), ValidationOptions::default()) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("reports serialize")
            );
        }
        Err(error) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&error).expect("errors serialize")
            );
            std::process::exit(1);
        }
    }
}
