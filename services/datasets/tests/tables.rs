//! CSV, TSV and JSONL uploads: formats, encodings, errors, inference, warnings, limits.

use tailor_datasets::{
    ColumnSchema, ColumnType, DatasetError, DatasetReport, Limits, Schema, Status, TableFormat,
    TextEncoding, ValidationOptions, Validator, WarningKind, validate_table,
};

fn validate(bytes: &[u8]) -> Result<DatasetReport, DatasetError> {
    validate_with(bytes, ValidationOptions::default())
}

/// Pushes the bytes in small uneven chunks, as a multipart upload would.
fn validate_with(bytes: &[u8], options: ValidationOptions) -> Result<DatasetReport, DatasetError> {
    let mut validator = Validator::new(options);
    for chunk in bytes.chunks(7) {
        validator.feed(chunk)?;
    }
    validator.finish()
}

fn column_type(report: &DatasetReport, name: &str) -> ColumnType {
    report
        .profile
        .columns
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .column_type
}

fn warning<'a>(report: &'a DatasetReport, kind: &str) -> Option<&'a WarningKind> {
    report
        .warnings
        .iter()
        .map(|w| &w.kind)
        .find(|k| serde_json::to_value(k).unwrap()["kind"] == kind)
}

fn reviews_csv() -> String {
    let mut csv = String::from("text,label,rating\n");
    for i in 0..30 {
        let label = ["positive", "negative", "neutral"][i % 3];
        csv.push_str(&format!(
            "\"Review number {i}, quite long text\",{label},{}\n",
            i % 10
        ));
    }
    csv
}

#[test]
fn a_clean_csv_is_accepted_with_a_profile() {
    let csv = reviews_csv();
    let report = validate(csv.as_bytes()).unwrap();
    assert_eq!(report.status, Status::Accepted);
    assert_eq!(report.error_count, 0);
    assert_eq!(report.profile.rows, 30);
    assert_eq!(report.profile.valid_rows, 30);
    assert_eq!(report.profile.format, TableFormat::Csv);
    assert_eq!(report.profile.delimiter, Some(','));
    assert_eq!(report.profile.encoding, TextEncoding::Utf8);
    assert_eq!(report.bytes, csv.len() as u64);
    assert_eq!(report.sha256.len(), 64);
    assert_eq!(column_type(&report, "text"), ColumnType::Text);
    assert_eq!(column_type(&report, "label"), ColumnType::Category);
    assert_eq!(column_type(&report, "rating"), ColumnType::Number);
    let label = &report.profile.columns[1];
    assert_eq!(label.distinct, Some(3));
    assert_eq!(label.top_values[0].count, 10);
    let text = &report.profile.columns[0];
    let hist = &text.length.as_ref().unwrap().histogram;
    assert_eq!(hist.iter().map(|b| b.count).sum::<u64>(), 30);
    assert_eq!(report.profile.sample.len(), 20);
    assert_eq!(report.profile.sample[0].line, 2);
    // The portal stores it as JSON.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["status"], "accepted");
    assert_eq!(json["profile"]["columns"][1]["type"], "category");
    let back: DatasetReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);
}

#[test]
fn sha256_is_of_the_raw_bytes() {
    let report = validate(b"a,b\nx,1\n").unwrap();
    // sha256 of "a,b\nx,1\n"
    use sha2::Digest;
    assert_eq!(
        report.sha256,
        hex::encode(sha2::Sha256::digest(b"a,b\nx,1\n"))
    );
}

#[test]
fn tsv_semicolon_and_given_delimiters() {
    let report = validate(b"text\tlabel\nhello, world\tgreeting\n").unwrap();
    assert_eq!(report.profile.delimiter, Some('\t'));
    assert_eq!(
        report.profile.sample[0].values[0].as_deref(),
        Some("hello, world")
    );

    let report = validate(b"text;label\na;b\n").unwrap();
    assert_eq!(report.profile.delimiter, Some(';'));

    let options = ValidationOptions {
        format: Some(TableFormat::Tsv),
        ..Default::default()
    };
    let report = validate_with(b"a,b\tc\n1,2\t3\n", options).unwrap();
    assert_eq!(report.profile.columns.len(), 2);
    assert_eq!(report.profile.columns[0].name, "a,b");

    let options = ValidationOptions {
        delimiter: Some(b'|'),
        ..Default::default()
    };
    let report = validate_with(b"a|b\n1|2\n", options).unwrap();
    assert_eq!(report.profile.columns.len(), 2);
}

#[test]
fn utf8_with_bom() {
    let mut bytes = vec![0xEF, 0xBB, 0xBF];
    bytes.extend_from_slice("text,label\ncafé,a\n".as_bytes());
    let report = validate(&bytes).unwrap();
    assert_eq!(report.profile.encoding, TextEncoding::Utf8Bom);
    // The BOM is not part of the first column name.
    assert_eq!(report.profile.columns[0].name, "text");
    assert_eq!(report.profile.sample[0].values[0].as_deref(), Some("café"));
}

#[test]
fn gb18030_is_detected_and_decoded() {
    let text =
        "条文,部门\n合同当事人应当遵循公平原则,民法\n刑罚的轻重应当与犯罪分子所犯罪行相适应,刑法\n";
    let (bytes, _, had_errors) = encoding_rs::GB18030.encode(text);
    assert!(!had_errors);
    assert!(
        std::str::from_utf8(&bytes).is_err(),
        "the test file must not be UTF-8"
    );
    let report = validate(&bytes).unwrap();
    assert_eq!(report.profile.encoding, TextEncoding::Gb18030);
    assert_eq!(report.profile.columns[0].name, "条文");
    assert_eq!(report.profile.sample[1].values[1].as_deref(), Some("刑法"));
}

#[test]
fn bad_encoding_names_the_byte_and_line() {
    let mut bytes = b"text,label\nfine,a\nbad ".to_vec();
    let offset = bytes.len() as u64;
    bytes.extend_from_slice(&[0xFF, 0xFE, 0xFF]);
    bytes.extend_from_slice(b",b\n");
    let err = validate(&bytes).unwrap_err();
    match &err {
        DatasetError::BadEncoding {
            offset: o, line, ..
        } => {
            assert_eq!(*o, offset);
            assert_eq!(*line, 3);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with(&format!("byte {offset} (line 3) is not valid UTF-8"))
    );
}

#[test]
fn ragged_rows_are_row_errors_with_the_expected_columns() {
    let csv = "text,label,rating,source\na,b,1,x\na,b,1,x,extra\na,b\na,b,2,y,\n";
    let report = validate(csv.as_bytes()).unwrap();
    assert_eq!(report.status, Status::Rejected);
    assert_eq!(report.error_count, 2);
    assert_eq!(
        report.errors[0].to_string(),
        "line 3: expected 4 columns (text, label, rating, source) but found 5; a value that contains a comma must be in double quotes"
    );
    assert_eq!(report.errors[1].line, Some(4));
    assert_eq!(report.profile.rows, 4);
    // A trailing empty value (as spreadsheets write) is not an error.
    assert_eq!(report.profile.valid_rows, 2);
}

#[test]
fn an_unclosed_quote_is_a_row_error() {
    let report = validate(b"text,label\n\"open,a\nb,c\n").unwrap();
    assert_eq!(report.status, Status::Rejected);
    assert_eq!(report.errors[0].line, Some(2));
    assert!(report.errors[0].message.contains("never closed"));
}

#[test]
fn broken_json_line_reports_line_and_column() {
    let jsonl = "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\" \"label\": \"y\"}\n[1]\n{\"text\": \"c\", \"label\": \"x\"}\n";
    let report = validate(jsonl.as_bytes()).unwrap();
    assert_eq!(report.profile.format, TableFormat::Jsonl);
    assert_eq!(report.error_count, 2);
    assert_eq!(
        report.errors[0].to_string(),
        "line 2: invalid JSON: expected ',' or '}' at column 14"
    );
    assert_eq!(
        report.errors[1].to_string(),
        "line 3: expected a JSON object {…} but found a list [...]"
    );
    assert_eq!(report.profile.rows, 4);
    assert_eq!(report.profile.valid_rows, 2);
}

#[test]
fn jsonl_types_lists_and_absent_keys() {
    let mut jsonl = String::new();
    for i in 0..12 {
        let tags = if i % 2 == 0 {
            "[\"nda\", \"fees\"]"
        } else {
            "[\"term\"]"
        };
        let extra = if i == 5 { ", \"note\": null" } else { "" };
        jsonl.push_str(&format!(
            "{{\"text\": \"clause {i} about something\", \"tags\": {tags}, \"score\": {}.5, \"ok\": {}{extra}}}\n",
            i,
            i % 2 == 0
        ));
    }
    jsonl.push_str(
        "{\"text\": \"late\", \"tags\": [\"nda\"], \"score\": 1, \"ok\": true, \"new\": \"x\"}\n",
    );
    let report = validate(jsonl.as_bytes()).unwrap();
    assert_eq!(report.status, Status::Accepted, "{:?}", report.errors);
    assert_eq!(column_type(&report, "tags"), ColumnType::MultiLabel);
    assert_eq!(column_type(&report, "score"), ColumnType::Number);
    assert_eq!(column_type(&report, "ok"), ColumnType::Category);
    let tags = report
        .profile
        .columns
        .iter()
        .find(|c| c.name == "tags")
        .unwrap();
    assert_eq!(tags.distinct, Some(3));
    assert_eq!(tags.top_values[0].value, "nda");
    assert_eq!(tags.top_values[0].count, 7);
    let new = report
        .profile
        .columns
        .iter()
        .find(|c| c.name == "new")
        .unwrap();
    assert_eq!((new.present, new.missing), (1, 12));
    assert_eq!(
        report.profile.sample[0].values.len(),
        report.profile.columns.len()
    );
}

#[test]
fn a_nested_object_is_a_row_error() {
    let report = validate(b"{\"text\": \"a\", \"meta\": {\"x\": 1}}\n{\"text\": \"b\"}\n").unwrap();
    assert_eq!(report.error_count, 1);
    assert_eq!(report.errors[0].column.as_deref(), Some("meta"));
}

#[test]
fn csv_multi_label_with_pipes() {
    let mut csv = String::from("text,tags\n");
    for i in 0..10 {
        let tags = ["nda|fees", "fees", "nda|term"][i % 3];
        csv.push_str(&format!("clause number {i},{tags}\n"));
    }
    let report = validate(csv.as_bytes()).unwrap();
    assert_eq!(column_type(&report, "tags"), ColumnType::MultiLabel);
    let tags = &report.profile.columns[1];
    assert_eq!(tags.distinct, Some(3));
}

#[test]
fn fatal_problems_of_tables() {
    assert_eq!(validate(b"").unwrap_err().code(), "empty");
    assert_eq!(validate(b"\n\n").unwrap_err().code(), "empty");
    assert_eq!(validate(b"text,label\n").unwrap_err().code(), "no_rows");
    assert_eq!(
        validate(b"text,label\n\n,\n").unwrap_err().code(),
        "no_rows"
    );
    let err = validate(b"1,positive\n2,negative\n").unwrap_err();
    assert_eq!(err.code(), "missing_header");
    assert!(
        err.to_string().contains("\"1\" looks like a value"),
        "{err}"
    );
    assert_eq!(validate(b",,\na,b,c\n").unwrap_err().code(), "no_rows");
    assert_eq!(
        validate(b"text,text\na,b\n").unwrap_err().code(),
        "duplicate_column"
    );
    assert_eq!(
        validate(&[0xFF, 0xFE, b'a', 0]).unwrap_err().code(),
        "utf16"
    );
    assert_eq!(
        validate(b"PK\x03\x04rest").unwrap_err().code(),
        "archive_given"
    );
    assert_eq!(
        validate(b"[{\"a\": 1}]").unwrap_err().code(),
        "unsupported_format"
    );
    assert_eq!(
        validate(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
            .unwrap_err()
            .code(),
        "binary"
    );
}

#[test]
fn over_the_byte_limit_is_too_large() {
    let options = ValidationOptions {
        limits: Limits {
            max_bytes: 1000,
            ..Default::default()
        },
        ..Default::default()
    };
    let csv = reviews_csv();
    assert!(csv.len() > 1000);
    let err = validate_with(csv.as_bytes(), options.clone()).unwrap_err();
    assert!(matches!(err, DatasetError::TooLarge { limit: 1000 }));
    assert_eq!(
        err.to_string(),
        "the upload is larger than the limit of 1000 bytes"
    );
    // The same through a reader.
    let err = validate_table(csv.as_bytes(), options).unwrap_err();
    assert_eq!(err.code(), "too_large");
}

#[test]
fn errors_are_capped_but_all_counted_and_state_stays_bounded() {
    let mut validator = Validator::new(ValidationOptions::default());
    validator.feed(b"text,label,rating\n").unwrap();
    for i in 0..10_000 {
        // Every row has one column too many; every text is distinct.
        validator
            .feed(format!("row {i} with its own words,label {},{i},oops\n", i % 7).as_bytes())
            .unwrap();
    }
    for i in 0..10_000 {
        validator
            .feed(format!("another distinct text {i},label {},{i}\n", i % 7).as_bytes())
            .unwrap();
    }
    let state = validator.retained();
    assert_eq!(state.errors, 100);
    assert_eq!(state.sample_rows, 20);
    assert!(state.buffered_rows <= 100);
    // At most 1000 distinct values per column, whatever the number of rows.
    assert!(state.distinct_values <= 3 * 1000, "{state:?}");
    let report = validator.finish().unwrap();
    assert_eq!(report.error_count, 10_000);
    assert_eq!(report.errors.len(), 100);
    assert_eq!(report.profile.rows, 20_000);
    assert_eq!(report.profile.rows_with_errors, 10_000);
    assert_eq!(report.errors[0].line, Some(2));
}

#[test]
fn a_schema_rechecks_every_row_with_the_chosen_types() {
    let csv = "text,label,rating\ngood stuff,pos,5\nbad stuff,neg,ten\nmeh,,3\n";
    let first = validate(csv.as_bytes()).unwrap();
    assert_eq!(first.status, Status::Accepted);
    assert_eq!(column_type(&first, "rating"), ColumnType::Text);
    assert!(warning(&first, "mostly_numbers").is_none()); // 1 of 3 is too many for "mostly"

    let mut schema = first.schema();
    for column in &mut schema.columns {
        match column.name.as_str() {
            "rating" => column.column_type = ColumnType::Number,
            "label" => {
                column.column_type = ColumnType::Category;
                column.required = true;
            }
            _ => {}
        }
    }
    let options = ValidationOptions {
        schema: Some(schema),
        ..Default::default()
    };
    let report = validate_with(csv.as_bytes(), options).unwrap();
    assert_eq!(report.status, Status::Rejected);
    let messages: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        vec![
            "line 3, column \"rating\": \"ten\" is not a number",
            "line 4, column \"label\": is empty, but this column needs a value",
        ]
    );
    assert_eq!(column_type(&report, "rating"), ColumnType::Number);

    let missing = ValidationOptions {
        schema: Some(Schema {
            columns: vec![ColumnSchema {
                name: "labels".into(),
                column_type: ColumnType::Category,
                required: false,
            }],
        }),
        ..Default::default()
    };
    let err = validate_with(csv.as_bytes(), missing).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the chosen types name a column \"labels\", but the file has only: text, label, rating"
    );
}

#[test]
fn warning_rare_classes() {
    let mut csv = String::from("text,label\n");
    for i in 0..20 {
        csv.push_str(&format!("common text {i},common\n"));
    }
    for i in 0..3 {
        csv.push_str(&format!("rare text {i},rare\n"));
    }
    let report = validate(csv.as_bytes()).unwrap();
    let Some(WarningKind::RareClasses {
        column,
        classes,
        total,
    }) = warning(&report, "rare_classes")
    else {
        panic!("{:?}", report.warnings);
    };
    assert_eq!(column, "label");
    assert_eq!(*total, 1);
    assert_eq!((classes[0].value.as_str(), classes[0].count), ("rare", 3));
}

#[test]
fn warning_labels_differing_by_case_or_spaces() {
    let mut csv = String::from("text,label\n");
    for (i, label) in [
        "Positive",
        "positive ",
        "negative",
        "Negative",
        "positive",
        "negative",
    ]
    .iter()
    .cycle()
    .take(30)
    .enumerate()
    {
        csv.push_str(&format!("text {i},{label}\n"));
    }
    let report = validate(csv.as_bytes()).unwrap();
    let Some(WarningKind::SimilarLabels { groups, .. }) = warning(&report, "similar_labels") else {
        panic!("{:?}", report.warnings);
    };
    assert_eq!(
        groups,
        &vec![
            vec!["Negative".to_string(), "negative".to_string()],
            vec![
                "Positive".to_string(),
                "positive".to_string(),
                "positive ".to_string()
            ],
        ]
    );
}

#[test]
fn warning_same_text_with_different_labels() {
    let mut csv = String::from("text,label\n");
    for i in 0..10 {
        csv.push_str(&format!("text number {i},{}\n", ["a", "b"][i % 2]));
    }
    csv.push_str("text number 3,a\n"); // line 12 contradicts line 5
    let report = validate(csv.as_bytes()).unwrap();
    let Some(WarningKind::ConflictingLabels {
        count,
        examples,
        label_column,
        ..
    }) = warning(&report, "conflicting_labels")
    else {
        panic!("{:?}", report.warnings);
    };
    assert_eq!(*count, 1);
    assert_eq!(label_column, "label");
    assert_eq!(examples[0].first_line, 5);
    assert_eq!(examples[0].first_label, "b");
    assert_eq!(examples[0].line, 12);
    assert_eq!(examples[0].label, "a");
}

#[test]
fn warning_duplicates_empty_rows_and_single_class() {
    let csv = "text,label\nsame text,a\n\n , \nother,a\n same text ,a\n";
    let report = validate(csv.as_bytes()).unwrap();
    assert_eq!(report.profile.duplicate_rows, 1);
    assert_eq!(report.profile.empty_rows, 2);
    let Some(WarningKind::DuplicateRows { examples, .. }) = warning(&report, "duplicate_rows")
    else {
        panic!("{:?}", report.warnings);
    };
    assert_eq!((examples[0].line, examples[0].first_line), (6, 2));
    assert!(matches!(
        warning(&report, "empty_rows"),
        Some(WarningKind::EmptyRows {
            count: 2,
            first_line: 3
        })
    ));
    assert!(warning(&report, "single_class").is_some());
    let messages: Vec<&str> = report.warnings.iter().map(|w| w.message.as_str()).collect();
    assert!(messages.contains(&"1 row(s) repeat an earlier row (line 6 repeats line 2); remove the copies unless they are intended"));
}

#[test]
fn warning_mostly_numbers_and_numbers_that_look_like_classes() {
    let mut csv = String::from("text,rating,class\n");
    for i in 0..30 {
        let rating = if i == 7 {
            "ten".to_string()
        } else {
            format!("{}.5", i)
        };
        csv.push_str(&format!("text {i},{rating},{}\n", i % 3));
    }
    let report = validate(csv.as_bytes()).unwrap();
    assert_eq!(column_type(&report, "rating"), ColumnType::Text);
    let Some(WarningKind::MostlyNumbers {
        not_numbers,
        examples,
        ..
    }) = warning(&report, "mostly_numbers")
    else {
        panic!("{:?}", report.warnings);
    };
    assert_eq!(*not_numbers, 1);
    assert_eq!((examples[0].line, examples[0].value.as_str()), (9, "ten"));
    assert!(matches!(
        warning(&report, "numbers_look_like_classes"),
        Some(WarningKind::NumbersLookLikeClasses { values, .. }) if values == &["0", "1", "2"]
    ));
}

#[test]
fn missing_value_markers_count_as_missing() {
    let report = validate(b"text,score\na,1\nb,NA\nc,\nd,#N/A\ne,2\n").unwrap();
    assert_eq!(column_type(&report, "score"), ColumnType::Number);
    assert_eq!(report.profile.columns[1].missing, 3);
}

#[test]
fn quoted_values_with_line_breaks_keep_line_numbers() {
    let csv = "text,label\n\"first\nsecond line\",a\nx,b,extra\n";
    let report = validate(csv.as_bytes()).unwrap();
    assert_eq!(report.errors[0].line, Some(4));
    assert_eq!(
        report.profile.sample[0].values[0].as_deref(),
        Some("first\nsecond line")
    );
}

#[test]
fn chunk_boundaries_do_not_change_the_report() {
    let mut text = String::from("条文,部门,标签\n");
    for i in 0..40 {
        text.push_str(&format!(
            "\"第{i}条, 合同\n\"\"引文\"\"\",民法,{}\r\n",
            ["甲|乙", "乙", "丙|甲"][i % 3]
        ));
    }
    text.push_str("坏,行\n");
    let (gb, _, _) = encoding_rs::GB18030.encode(&text);
    for bytes in [text.as_bytes(), &gb[..]] {
        let whole = validate_table(bytes, ValidationOptions::default()).unwrap();
        for size in [1, 2, 3, 5, 64, 4097] {
            let mut validator = Validator::new(ValidationOptions::default());
            for chunk in bytes.chunks(size) {
                validator.feed(chunk).unwrap();
            }
            assert_eq!(validator.finish().unwrap(), whole, "chunks of {size}");
        }
        assert_eq!(whole.profile.rows, 41);
        assert_eq!(whole.error_count, 1);
        assert_eq!(whole.errors[0].line, Some(82));
        assert_eq!(whole.profile.columns[2].column_type, ColumnType::MultiLabel);
    }
}

#[test]
fn a_validator_can_move_to_a_blocking_thread() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Validator>();
}

#[test]
fn jsonl_columns_keep_the_order_of_the_file() {
    let report = validate(b"{\"zeta\": \"a\", \"alpha\": 1, \"mid\": \"x\"}\n{\"mid\": \"y\", \"zeta\": \"b\", \"alpha\": 2}\n42\n").unwrap();
    let names: Vec<&str> = report
        .profile
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
    assert_eq!(
        report.errors[0].to_string(),
        "line 3: expected a JSON object {…} but found a number"
    );
}

#[test]
fn an_unnamed_index_column_is_named_and_warned_about() {
    let report = validate(b",text,label\n0,a,x\n1,b,y\n").unwrap();
    let names: Vec<&str> = report
        .profile
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["column_1", "text", "label"]);
    assert!(matches!(
        warning(&report, "unnamed_columns"),
        Some(WarningKind::UnnamedColumns { columns }) if columns == &["column_1"]
    ));
}

#[test]
fn warning_empty_column_and_tracking_limit() {
    let mut csv = String::from("text,label,notes\n");
    for i in 0..10 {
        csv.push_str(&format!("text {i},{},\n", ["a", "b"][i % 2]));
    }
    csv.push_str("text 0,a,\n"); // a duplicate past the tracking limit: not found
    let options = ValidationOptions {
        limits: Limits {
            max_tracked_rows: 5,
            ..Default::default()
        },
        ..Default::default()
    };
    let report = validate_with(csv.as_bytes(), options).unwrap();
    assert!(matches!(
        warning(&report, "empty_column"),
        Some(WarningKind::EmptyColumn { column }) if column == "notes"
    ));
    assert!(matches!(
        warning(&report, "tracking_limited"),
        Some(WarningKind::TrackingLimited { rows: 5 })
    ));
    assert_eq!(report.profile.duplicate_rows, 0);
    let notes = &report.profile.columns[2];
    assert_eq!((notes.present, notes.missing), (0, 11));
}
