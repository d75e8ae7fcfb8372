//! ZIP archives of files with a manifest: references, safety, limits.

use std::io::{Cursor, Write};

use tailor_datasets::{
    ColumnType, DatasetError, DatasetReport, Limits, Modality, Status, ValidationOptions,
    WarningKind, validate_archive,
};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

fn deflated() -> SimpleFileOptions {
    SimpleFileOptions::default().compression_method(CompressionMethod::Deflated)
}

/// A ZIP holding `entries` (name, content), written with the zip crate.
fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content) in entries {
        writer.start_file(*name, deflated()).unwrap();
        writer.write_all(content).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn check(bytes: Vec<u8>) -> Result<DatasetReport, DatasetError> {
    check_with(bytes, Limits::default())
}

fn check_with(bytes: Vec<u8>, limits: Limits) -> Result<DatasetReport, DatasetError> {
    let options = ValidationOptions {
        limits,
        ..Default::default()
    };
    validate_archive(Cursor::new(bytes), options)
}

/// A real 4×3 PNG.
fn png() -> &'static [u8] {
    static PNG: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| tailor_media::check::encode_png(4, 3, &[90; 36]).unwrap());
    &PNG
}

/// A real WAV: 0.25 s of a tone, 16-bit mono at 8 kHz.
fn wav() -> &'static [u8] {
    static WAV: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| wav_of(8000, 2000));
    &WAV
}

fn wav_of(rate: u32, samples: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..samples)
        .flat_map(|i| (((i as f32 * 0.05).sin() * 8000.0) as i16).to_le_bytes())
        .collect();
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    for v in [1u16, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    for v in [2u16, 16] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

fn scans_manifest(rows: usize) -> String {
    let mut csv = String::from("file,finding\n");
    for i in 0..rows {
        csv.push_str(&format!("scans/{i}.png,{}\n", ["normal", "nodule"][i % 2]));
    }
    csv
}

#[test]
fn a_manifest_with_its_files_is_accepted() {
    let manifest = scans_manifest(12);
    let names: Vec<String> = (0..12).map(|i| format!("scans/{i}.png")).collect();
    let mut entries: Vec<(&str, &[u8])> = vec![("manifest.csv", manifest.as_bytes())];
    entries.extend(names.iter().map(|n| (n.as_str(), png())));
    entries.push(("extra/notes.wav", wav()));
    let bytes = zip_of(&entries);
    let size = bytes.len() as u64;
    let report = check(bytes).unwrap();
    assert_eq!(report.status, Status::Accepted, "{:?}", report.errors);
    assert_eq!(report.bytes, size);
    assert_eq!(report.profile.rows, 12);
    let file = &report.profile.columns[0];
    assert_eq!(file.column_type, ColumnType::File);
    assert_eq!(file.modality, Some(Modality::Image));
    assert_eq!(report.profile.columns[1].column_type, ColumnType::Category);
    let archive = report.profile.archive.as_ref().unwrap();
    assert_eq!(archive.manifest, "manifest.csv");
    assert_eq!(archive.files, 13);
    assert_eq!(archive.unreferenced_files, 1);
    assert_eq!(
        archive.files_by_modality,
        vec![(Modality::Image, 12), (Modality::Audio, 1)]
    );
    assert!(report.warnings.iter().any(|w| matches!(
        &w.kind,
        WarningKind::UnreferencedFiles { count: 1, examples } if examples == &["extra/notes.wav"]
    )));
}

#[test]
fn a_row_naming_a_missing_file_is_a_row_error() {
    let mut manifest = scans_manifest(4);
    manifest.push_str("scans/missing.png,normal\n./scans/0.png,normal\n../outside.png,nodule\n");
    let names: Vec<String> = (0..4).map(|i| format!("scans/{i}.png")).collect();
    let mut entries: Vec<(&str, &[u8])> = vec![("manifest.csv", manifest.as_bytes())];
    entries.extend(names.iter().map(|n| (n.as_str(), png())));
    let report = check(zip_of(&entries)).unwrap();
    assert_eq!(report.status, Status::Rejected);
    let messages: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        vec![
            "manifest.csv, line 6, column \"file\": file \"scans/missing.png\" is not in the archive",
            "manifest.csv, line 8, column \"file\": \"../outside.png\" points outside the archive; name files by their path inside it",
        ]
    );
}

#[test]
fn one_top_folder_jsonl_manifest_and_os_litter() {
    let mut manifest = String::new();
    for i in 0..6 {
        manifest.push_str(&format!(
            "{{\"audio\": \"clips/{i}.wav\", \"speaker\": \"{}\", \"tags\": [\"calm\"]}}\n",
            ["ann", "bob"][i % 2]
        ));
    }
    let names: Vec<String> = (0..6).map(|i| format!("dataset/clips/{i}.wav")).collect();
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("dataset/manifest.jsonl", manifest.as_bytes()),
        ("__MACOSX/dataset/._manifest.jsonl", b"junk"),
        ("dataset/.DS_Store", b"junk"),
    ];
    entries.extend(names.iter().map(|n| (n.as_str(), wav())));
    let report = check(zip_of(&entries)).unwrap();
    assert_eq!(report.status, Status::Accepted, "{:?}", report.errors);
    assert_eq!(
        report.profile.archive.as_ref().unwrap().manifest,
        "dataset/manifest.jsonl"
    );
    assert_eq!(report.profile.columns[0].column_type, ColumnType::File);
    assert_eq!(report.profile.columns[0].modality, Some(Modality::Audio));
    assert_eq!(
        report.profile.columns[2].column_type,
        ColumnType::MultiLabel
    );
    assert!(
        report
            .warnings
            .iter()
            .all(|w| !matches!(w.kind, WarningKind::UnreferencedFiles { .. }))
    );
}

#[test]
fn the_only_table_at_the_top_is_the_manifest() {
    let manifest = scans_manifest(2);
    let report = check(zip_of(&[
        ("labels.csv", manifest.as_bytes()),
        ("scans/0.png", png()),
        ("scans/1.png", png()),
        ("scans/readme.csv", b"a\n1\n"),
    ]))
    .unwrap();
    assert_eq!(report.profile.archive.unwrap().manifest, "labels.csv");
}

#[test]
fn same_file_with_different_labels_is_a_warning() {
    let mut manifest = scans_manifest(10);
    manifest.push_str("scans/0.png,nodule\n");
    let names: Vec<String> = (0..10).map(|i| format!("scans/{i}.png")).collect();
    let mut entries: Vec<(&str, &[u8])> = vec![("manifest.csv", manifest.as_bytes())];
    entries.extend(names.iter().map(|n| (n.as_str(), png())));
    let report = check(zip_of(&entries)).unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| matches!(&w.kind, WarningKind::ConflictingLabels { count: 1, .. })),
        "{:?}",
        report.warnings
    );
}

#[test]
fn no_manifest_or_several_tables() {
    assert_eq!(
        check(zip_of(&[("a.png", png())])).unwrap_err().code(),
        "no_manifest"
    );
    let err = check(zip_of(&[("a.csv", b"x\n1\n"), ("b.jsonl", b"{}\n")])).unwrap_err();
    assert_eq!(err.code(), "ambiguous_manifest");
    assert!(err.to_string().contains("a.csv, b.jsonl"), "{err}");
}

#[test]
fn not_a_zip() {
    let err = check(b"text,label\na,b\n".to_vec()).unwrap_err();
    assert_eq!(err.code(), "not_a_zip");
    assert_eq!(check(Vec::new()).unwrap_err().code(), "empty");
}

#[test]
fn path_traversal_is_refused() {
    let err = check(zip_of(&[
        ("manifest.csv", b"file\na.png\n"),
        ("../../etc/cron.d/x", b"boom"),
    ]))
    .unwrap_err();
    assert_eq!(err.code(), "unsafe_path");
    assert_eq!(
        err.to_string(),
        "the archive entry \"../../etc/cron.d/x\" points outside the archive (\"..\"); the archive is refused for safety"
    );
    let err = check(zip_of(&[("images/../../x.png", png())])).unwrap_err();
    assert_eq!(err.code(), "unsafe_path");
}

#[test]
fn absolute_paths_are_refused() {
    let err = check(zip_of(&[("/etc/passwd", b"root")])).unwrap_err();
    assert!(
        matches!(
            err,
            DatasetError::UnsafePath {
                reason: "is an absolute path",
                ..
            }
        ),
        "{err:?}"
    );
    let err = check(zip_of(&[("C:\\Windows\\x.dll", b"MZ")])).unwrap_err();
    assert_eq!(err.code(), "unsafe_path");
}

#[test]
fn symlinks_are_refused() {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    writer.start_file("manifest.csv", deflated()).unwrap();
    writer.write_all(b"file,label\nlink.png,a\n").unwrap();
    writer
        .add_symlink("link.png", "/etc/passwd", SimpleFileOptions::default())
        .unwrap();
    let bytes = writer.finish().unwrap().into_inner();
    let err = check(bytes).unwrap_err();
    assert!(
        matches!(&err, DatasetError::Symlink { path } if path == "link.png"),
        "{err:?}"
    );
}

#[test]
fn a_zip_bomb_is_measured_and_refused() {
    // 64 MiB of zeros deflates to about 64 KiB.
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    writer.start_file("manifest.csv", deflated()).unwrap();
    writer.write_all(b"file\nzeros.bin\n").unwrap();
    writer.start_file("zeros.bin", deflated()).unwrap();
    let block = vec![0u8; 1 << 20];
    for _ in 0..64 {
        writer.write_all(&block).unwrap();
    }
    let bytes = writer.finish().unwrap().into_inner();
    assert!(
        bytes.len() < 1 << 20,
        "the bomb is small: {} bytes",
        bytes.len()
    );
    let limits = Limits {
        max_unpacked_bytes: 16 << 20,
        ..Default::default()
    };
    let err = check_with(bytes.clone(), limits).unwrap_err();
    assert!(matches!(err, DatasetError::UnpackedTooLarge { limit } if limit == 16 << 20));
    assert_eq!(
        err.to_string(),
        "the archive unpacks to more than 16 MiB; it is either a ZIP bomb or too large to train on"
    );
    // Within the limit, the same archive is fine.
    let report = check(bytes).unwrap();
    assert_eq!(
        report.profile.archive.unwrap().unpacked_bytes,
        (64 << 20) + 15
    );
}

#[test]
fn a_bomb_whose_headers_lie_is_still_refused() {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    writer.start_file("zeros.bin", deflated()).unwrap();
    writer.write_all(&vec![0u8; 8 << 20]).unwrap();
    let mut bytes = writer.finish().unwrap().into_inner();
    // Claim 1 byte unpacked in both the local header (offset 22) and the central
    // directory entry (offset 24), as a hostile archive would.
    bytes[22..26].copy_from_slice(&1u32.to_le_bytes());
    let central = bytes.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
    bytes[central + 24..central + 28].copy_from_slice(&1u32.to_le_bytes());
    let limits = Limits {
        max_unpacked_bytes: 1 << 20,
        ..Default::default()
    };
    let err = check_with(bytes, limits).unwrap_err();
    // Either the measured size is over the limit, or the reader refuses the lie.
    assert!(
        matches!(err.code(), "unpacked_too_large" | "corrupt_entry"),
        "{err:?}"
    );
}

#[test]
fn too_many_entries() {
    let names: Vec<String> = (0..20).map(|i| format!("{i}.png")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), png())).collect();
    let limits = Limits {
        max_archive_entries: 10,
        ..Default::default()
    };
    let err = check_with(zip_of(&entries), limits).unwrap_err();
    assert!(matches!(err, DatasetError::TooManyEntries { limit: 10 }));
}

#[test]
fn over_the_byte_limit() {
    let bytes = zip_of(&[("manifest.csv", scans_manifest(100).as_bytes())]);
    let limits = Limits {
        max_bytes: 100,
        ..Default::default()
    };
    assert_eq!(check_with(bytes, limits).unwrap_err().code(), "too_large");
}

#[test]
fn validate_upload_picks_archive_or_table() {
    use tailor_datasets::{TableFormat, validate_upload};
    let manifest = scans_manifest(2);
    let zip = zip_of(&[
        ("manifest.csv", manifest.as_bytes()),
        ("scans/0.png", png()),
        ("scans/1.png", png()),
    ]);
    let report = validate_upload(
        Cursor::new(zip),
        Some("scans.zip"),
        ValidationOptions::default(),
    )
    .unwrap();
    assert!(report.profile.archive.is_some());
    assert_eq!(report.upload_format(), "zip");
    let tsv = b"a,b\tc\nx,y\tz\n".to_vec();
    let report = validate_upload(
        Cursor::new(tsv),
        Some("data.TSV"),
        ValidationOptions::default(),
    )
    .unwrap();
    assert_eq!(report.profile.format, TableFormat::Tsv);
    assert_eq!(report.upload_format(), "tsv");
    assert_eq!(report.profile.columns.len(), 2);
}

#[test]
fn a_manifest_naming_only_missing_images_is_rejected_not_read_as_text() {
    // The files are under data/, the manifest names images/: every row is an error.
    let manifest = "image,label\nimages/a.png,x\nimages/b.png,y\nimages/c.png,x\n";
    let report = check(zip_of(&[
        ("manifest.csv", manifest.as_bytes()),
        ("data/a.png", png()),
        ("data/b.png", png()),
    ]))
    .unwrap();
    assert_eq!(report.profile.columns[0].column_type, ColumnType::File);
    assert_eq!(report.status, Status::Rejected);
    assert_eq!(report.error_count, 3);
}

#[test]
fn a_schema_file_column_first_seen_late_in_jsonl_is_checked() {
    use tailor_datasets::{ColumnSchema, Schema};
    let mut manifest = String::new();
    for i in 0..150 {
        manifest.push_str(&format!("{{\"label\": \"{}\"}}\n", ["a", "b"][i % 2]));
    }
    manifest.push_str("{\"label\": \"a\", \"scan\": \"gone.png\"}\n");
    let options = ValidationOptions {
        schema: Some(Schema {
            columns: vec![ColumnSchema {
                name: "scan".into(),
                column_type: ColumnType::File,
                required: false,
            }],
        }),
        ..Default::default()
    };
    let report = validate_archive(
        Cursor::new(zip_of(&[
            ("manifest.jsonl", manifest.as_bytes()),
            ("x.png", png()),
        ])),
        options,
    )
    .unwrap();
    assert_eq!(report.error_count, 1);
    assert_eq!(
        report.errors[0].to_string(),
        "manifest.jsonl, line 151, column \"scan\": file \"gone.png\" is not in the archive"
    );
}

#[test]
fn warning_mixed_modalities_in_one_column() {
    let manifest = "file,label\na.png,x\nb.wav,y\nc.png,x\nd.wav,y\n";
    let report = check(zip_of(&[
        ("manifest.csv", manifest.as_bytes()),
        ("a.png", png()),
        ("b.wav", wav()),
        ("c.png", png()),
        ("d.wav", wav()),
    ]))
    .unwrap();
    assert_eq!(report.status, Status::Accepted);
    assert!(
        report.warnings.iter().any(
            |w| matches!(&w.kind, WarningKind::MixedModalities { column } if column == "file")
        )
    );
}

#[test]
fn a_file_that_does_not_decode_is_an_error_of_its_rows_and_nothing_else_is_lost() {
    let manifest = "clip,label\n\
                    a.wav,x\n\
                    b.wav,y\n\
                    broken.wav,x\n\
                    c.wav,y\n\
                    gone.wav,x\n\
                    broken.wav,y\n";
    let long = wav_of(8000, 8000);
    let report = check(zip_of(&[
        ("manifest.csv", manifest.as_bytes()),
        ("a.wav", wav()),
        ("b.wav", &long),
        ("c.wav", wav()),
        // A WAV cut inside its header.
        ("broken.wav", &wav()[..30]),
    ]))
    .unwrap();
    assert_eq!(report.status, Status::Rejected);
    assert_eq!(report.error_count, 3);
    let messages: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert!(
        messages[0].starts_with(
            "manifest.csv, line 4, column \"clip\": file \"broken.wav\": the file cannot be read"
        ),
        "{messages:?}"
    );
    assert_eq!(
        messages[1],
        "manifest.csv, line 6, column \"clip\": file \"gone.wav\" is not in the archive"
    );
    assert!(messages[2].starts_with("manifest.csv, line 7, column \"clip\": file \"broken.wav\""));
    // Every row was read and profiled; the files that decoded are summarized.
    assert_eq!(report.profile.rows, 6);
    assert_eq!(report.profile.rows_with_errors, 3);
    let clip = &report.profile.columns[0];
    assert_eq!(clip.modality, Some(Modality::Audio));
    let media = clip.media.as_ref().expect("a media profile");
    assert_eq!(media.decoded, 3);
    let audio = media.audio.as_ref().expect("audio durations");
    assert_eq!(audio.seconds.min, 0.25);
    assert_eq!(audio.seconds.max, 1.0);
    assert_eq!(audio.seconds.mean, 0.5);
    assert_eq!(audio.sample_rates[0].value, "8000");
    assert_eq!(audio.sample_rates[0].count, 3);
}

#[test]
fn a_file_over_the_media_limit_is_refused_by_name() {
    let manifest = "clip,label\na.wav,x\nb.wav,y\n";
    let mut limits = Limits::default();
    limits.media.max_bytes = 10_000;
    let long = wav_of(8000, 8000);
    let report = check_with(
        zip_of(&[
            ("manifest.csv", manifest.as_bytes()),
            ("a.wav", wav()),
            ("b.wav", &long),
        ]),
        limits,
    )
    .unwrap();
    assert_eq!(report.status, Status::Rejected);
    assert_eq!(
        report.errors[0].to_string(),
        "manifest.csv, line 3, column \"clip\": file \"b.wav\": the file is 16044 bytes; \
         the limit is 10000 bytes"
    );
}

#[test]
fn media_summaries_survive_json() {
    let manifest = "clip,label\na.wav,x\nb.wav,y\n";
    let report = check(zip_of(&[
        ("manifest.csv", manifest.as_bytes()),
        ("a.wav", wav()),
        ("b.wav", wav()),
    ]))
    .unwrap();
    let json = serde_json::to_value(&report.profile).unwrap();
    assert_eq!(json["columns"][0]["media"]["decoded"], 2);
    assert_eq!(
        json["columns"][0]["media"]["audio"]["seconds"]["mean"],
        0.25
    );
    let back: tailor_datasets::Profile = serde_json::from_value(json).unwrap();
    assert_eq!(back, report.profile);
}

#[test]
fn images_are_decoded_summarized_with_thumbnails_and_a_broken_one_is_named() {
    let mut manifest = String::from("scan,finding\n");
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..10 {
        let (w, h) = if i < 6 { (8, 6) } else { (20, 10) };
        let rgb: Vec<u8> = (0..w * h * 3).map(|v| (v * 7 + i) as u8).collect();
        let name = format!("scans/{i}.png");
        manifest.push_str(&format!("{name},{}\n", ["normal", "nodule"][i % 2]));
        entries.push((
            name,
            tailor_media::check::encode_png(w as u32, h as u32, &rgb).unwrap(),
        ));
    }
    manifest.push_str("scans/broken.png,normal\n");
    let broken = entries[0].1[..entries[0].1.len() - 20].to_vec();
    entries.push(("scans/broken.png".into(), broken));
    let mut all: Vec<(&str, &[u8])> = vec![("manifest.csv", manifest.as_bytes())];
    all.extend(entries.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    let report = check(zip_of(&all)).unwrap();
    assert_eq!(report.status, Status::Rejected);
    assert_eq!(report.error_count, 1);
    let message = report.errors[0].to_string();
    assert!(
        message.starts_with("manifest.csv, line 12, column \"scan\": file \"scans/broken.png\": "),
        "{message}"
    );
    let images = report.profile.columns[0]
        .media
        .as_ref()
        .and_then(|m| m.images.as_ref())
        .expect("image summary");
    assert_eq!(images.width.min, 8.0);
    assert_eq!(images.width.max, 20.0);
    assert_eq!(images.sizes[0].value, "8×6");
    assert_eq!(images.sizes[0].count, 6);
    assert_eq!(images.sizes[1].value, "20×10");
    assert_eq!(images.thumbnails.len(), 8);
    let thumb = &images.thumbnails[0];
    let b64 = thumb
        .data_uri
        .strip_prefix("data:image/png;base64,")
        .unwrap();
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let decoded = tailor_media::image::decode(&png, &tailor_media::Limits::default()).unwrap();
    assert!(decoded.width <= 64 && decoded.height <= 64);
}
