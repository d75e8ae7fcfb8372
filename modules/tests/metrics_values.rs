//! Every metric on hand-checked values.

use tailor_modules::metrics::{self, Metrics, Span};

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-9, "{a} != {b}");
}

#[test]
fn classification_by_hand() {
    // truth:     a a a b b c
    // predicted: a a b b c c
    let labels = s(&["a", "b", "c", "d"]);
    let m = metrics::classification(&[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 2, 2], &labels);
    close(m.accuracy, 4.0 / 6.0);
    assert_eq!(m.confusion[0], vec![2, 1, 0, 0]);
    assert_eq!(m.confusion[1], vec![0, 1, 1, 0]);
    assert_eq!(m.confusion[2], vec![0, 0, 1, 0]);
    // a: p 2/2, r 2/3, f1 0.8; b: p 1/2, r 1/2, f1 0.5; c: p 1/2, r 1, f1 2/3.
    close(m.per_class[0].precision, 1.0);
    close(m.per_class[0].recall, 2.0 / 3.0);
    close(m.per_class[0].f1, 0.8);
    close(m.per_class[1].f1, 0.5);
    close(m.per_class[2].f1, 2.0 / 3.0);
    assert_eq!(m.per_class[2].support, 1);
    // "d" is in neither truth nor predictions: left out of the macro average.
    close(m.macro_f1, (0.8 + 0.5 + 2.0 / 3.0) / 3.0);
    close(m.macro_precision, (1.0 + 0.5 + 0.5) / 3.0);
    close(m.macro_recall, (2.0 / 3.0 + 0.5 + 1.0) / 3.0);
    let metrics = Metrics::Classification(m);
    close(metrics.get("accuracy").unwrap(), 4.0 / 6.0);
    assert_eq!(metrics.get("rmse"), None);
    assert!(metrics.summary().contains_key("macro_f1"));
}

#[test]
fn multi_label_by_hand() {
    let t = vec![
        vec![true, false, true],
        vec![false, true, false],
        vec![true, true, false],
    ];
    let p = vec![
        vec![true, false, false],
        vec![false, true, true],
        vec![true, true, false],
    ];
    let m = metrics::multi_label(&t, &p, &s(&["x", "y", "z"]));
    // x: tp 2; y: tp 2; z: fn 1, fp 1 → micro p = 4/5, r = 4/5.
    close(m.micro_precision, 0.8);
    close(m.micro_recall, 0.8);
    close(m.micro_f1, 0.8);
    close(m.macro_f1, (1.0 + 1.0 + 0.0) / 3.0);
    close(m.subset_accuracy, 1.0 / 3.0);
}

#[test]
fn regression_by_hand() {
    let m = metrics::regression(&[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 4.0, 2.0]);
    close(m.mae, 0.75);
    close(m.rmse, (5.0f64 / 4.0).sqrt());
    // SS_res = 5, SS_tot = 5 → R² = 0.
    close(m.r2, 0.0);
    let perfect = metrics::regression(&[1.0, 3.0], &[1.0, 3.0]);
    close(perfect.r2, 1.0);
}

#[test]
fn spans_follow_seqeval() {
    let tags = s(&[
        "B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "O",
    ]);
    assert_eq!(
        metrics::spans(&tags),
        vec![
            Span {
                label: "PER".into(),
                start: 0,
                end: 2
            },
            // An I- that follows O starts an entity (conlleval's lenient rule).
            Span {
                label: "LOC".into(),
                start: 3,
                end: 5
            },
            Span {
                label: "LOC".into(),
                start: 5,
                end: 6
            },
            // A type change ends one entity and starts another.
            Span {
                label: "ORG".into(),
                start: 6,
                end: 7
            },
        ]
    );
    assert_eq!(
        metrics::spans(&s(&["B-X"])),
        vec![Span {
            label: "X".into(),
            start: 0,
            end: 1
        }]
    );
}

#[test]
fn entity_f1_by_hand() {
    // seqeval's README example: precision 0.5, recall 0.5, f1 0.5.
    let truth = vec![
        s(&["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"]),
        s(&["B-PER", "I-PER", "O"]),
    ];
    let pred = vec![
        s(&["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"]),
        s(&["B-PER", "I-PER", "O"]),
    ];
    let m = metrics::tagging(&truth, &pred);
    close(m.entity_precision, 0.5);
    close(m.entity_recall, 0.5);
    close(m.entity_f1, 0.5);
    // Words 2 and 3 of the first sentence differ.
    close(m.token_accuracy, 8.0 / 10.0);
    assert_eq!(
        m.per_type
            .iter()
            .map(|c| c.label.as_str())
            .collect::<Vec<_>>(),
        vec!["MISC", "PER"]
    );
    close(m.per_type[1].f1, 1.0);
    close(m.per_type[0].f1, 0.0);
}

#[test]
fn direction_of_metrics() {
    assert!(metrics::higher_is_better("macro_f1"));
    assert!(!metrics::higher_is_better("rmse"));
    assert!(!metrics::higher_is_better("loss"));
}
