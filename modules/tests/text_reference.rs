//! The BERT encoder on the real all-MiniLM-L6-v2 checkpoint against reference numbers from
//! an independent numpy implementation (`tests/reference/minilm_reference.py`, output
//! committed as `tests/reference/minilm_l6.json`).

mod text_support;

use candle_core::{D, IndexOp, Tensor};
use serde::Deserialize;
use tailor_modules::encoder::{Encoder, Prepared, RawColumn};
use tailor_modules::text::{Pooling, TextEncoder, TextEncoderOptions};
use text_support::{max_abs_diff, minilm, texts};

#[derive(Deserialize)]
struct Reference {
    dims: usize,
    sentences: Vec<RefSentence>,
    cosine: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct RefSentence {
    text: String,
    ids: Vec<u32>,
    mean_normalized: Vec<f32>,
    mean: Vec<f32>,
    cls: Vec<f32>,
}

fn reference() -> Reference {
    serde_json::from_str(include_str!("reference/minilm_l6.json")).expect("reference fixture")
}

fn normalize(x: &Tensor) -> Tensor {
    x.broadcast_div(
        &x.sqr()
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .sqrt()
            .unwrap(),
    )
    .unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, reference {w} (tolerance {tol})"
        );
    }
}

#[test]
fn minilm_embeddings_match_the_numpy_reference() {
    let reference = reference();
    let sentences: Vec<String> = reference.sentences.iter().map(|s| s.text.clone()).collect();
    let encoder = TextEncoder::load_frozen(minilm(), Pooling::Mean, 128).unwrap();

    // One padded batch: the sentences have 9, 10 and 11 tokens.
    let Prepared::Text(tokenized) = encoder
        .prepare(&RawColumn::Text(sentences.clone()))
        .unwrap()
    else {
        panic!("a text encoder prepares text");
    };
    let encoded = encoder
        .forward(&Prepared::Text(tokenized.clone()), false)
        .unwrap();
    let unit = normalize(&encoded.pooled);

    for (i, sentence) in reference.sentences.iter().enumerate() {
        let n = sentence.ids.len();
        let ids = tokenized.ids.i(i).unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(
            &ids[..n],
            &sentence.ids[..],
            "token ids of {:?}",
            sentence.text
        );
        assert!(ids[n..].iter().all(|&id| id == 0), "padding ids");

        let row = |t: &Tensor| {
            t.i(i)
                .unwrap()
                .narrow(0, 0, reference.dims)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_close(
            "mean_normalized",
            &row(&unit),
            &sentence.mean_normalized,
            1e-4,
        );
        assert_close("mean", &row(&encoded.pooled), &sentence.mean, 1e-4);
        let cls = encoded
            .tokens
            .i((i, 0))
            .unwrap()
            .narrow(0, 0, reference.dims)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_close("cls", &cls, &sentence.cls, 1e-4);
    }

    let cosine = unit
        .matmul(&unit.t().unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (got, want) in cosine
        .iter()
        .flatten()
        .zip(reference.cosine.iter().flatten())
    {
        assert!(
            (got - want).abs() < 1e-4,
            "cosine {got} vs reference {want}"
        );
    }
}

#[test]
fn similar_sentences_are_closer_than_unrelated_ones() {
    let encoder = TextEncoder::load_frozen(minilm(), Pooling::Mean, 128).unwrap();
    let encoded = encoder
        .encode(
            &texts(&[
                "The cat sits on the mat.",
                "A cat is sitting on a rug.",
                "Interest rates rose sharply this quarter.",
                "The central bank increased borrowing costs.",
            ]),
            false,
        )
        .unwrap();
    let unit = normalize(&encoded.pooled);
    let cos = unit
        .matmul(&unit.t().unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert!(
        cos[0][1] > cos[0][2] + 0.3 && cos[0][1] > cos[0][3] + 0.3,
        "cats: {cos:?}"
    );
    assert!(
        cos[2][3] > cos[2][0] + 0.3 && cos[2][3] > cos[2][1] + 0.3,
        "rates: {cos:?}"
    );
}

#[test]
fn padding_does_not_change_an_items_embedding() {
    let encoder = TextEncoder::load_frozen(minilm(), Pooling::Mean, 128).unwrap();
    let alone = encoder.encode(&texts(&["Short."]), false).unwrap();
    let padded = encoder
        .encode(
            &texts(&[
                "Short.",
                "A considerably longer sentence that forces padding of the first.",
            ]),
            false,
        )
        .unwrap();
    let diff = max_abs_diff(&alone.pooled.i(0).unwrap(), &padded.pooled.i(0).unwrap());
    assert!(diff < 1e-5, "padding changed the pooled vector by {diff}");
}

#[test]
fn tokenization_truncates_and_aligns_words() {
    let options = TextEncoderOptions {
        max_tokens: 8,
        pooling: Pooling::Cls,
        ..Default::default()
    };
    let encoder = TextEncoder::load(minilm(), &options).unwrap();
    let long = "one two three four five six seven eight nine ten eleven twelve";
    let tokenized = encoder
        .tokenize(&texts(&[long, "unbelievably short"]))
        .unwrap();
    assert_eq!(
        tokenized.ids.dims(),
        &[2, 8],
        "truncated at max_tokens, padded to the longest"
    );
    // [CLS] one two three four five six [SEP]
    assert_eq!(
        tokenized.word_ids[0],
        vec![
            None,
            Some(0),
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(5),
            None
        ]
    );
    // "unbelievably" is split into word pieces that share word 0; padding has no word.
    let second = &tokenized.word_ids[1];
    assert_eq!(second[0], None);
    let pieces = second.iter().filter(|w| **w == Some(0)).count();
    assert!(pieces >= 2, "word pieces of `unbelievably`: {second:?}");
    assert_eq!(*second.last().unwrap(), None);
    let mask = tokenized.mask.to_vec2::<f32>().unwrap();
    assert_eq!(mask[0], vec![1.0; 8]);
    assert_eq!(
        mask[1].iter().filter(|m| **m == 1.0).count(),
        2 + pieces + 1
    );

    let encoded = encoder.forward(&Prepared::Text(tokenized), false).unwrap();
    assert_eq!(encoded.pooled.dims(), &[2, 384]);
    assert_eq!(encoder.width(), 384);
    assert!(
        encoder.adapter_vars().is_empty(),
        "the frozen baseline has nothing to train"
    );
}
