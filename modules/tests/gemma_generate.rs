//! Generation with Gemma 3 270M: greedy decoding through the key/value cache gives the
//! tokens transformers' `generate(do_sample=False)` gives on the same checkpoint
//! (`tests/reference/gemma3_forward.json`), it is deterministic at temperature 0, seeded
//! sampling repeats, stop sequences cut the text, and SFT puts loss on the response only.

use candle_core::Device;
use serde::Deserialize;
use tailor_modules::generate::{FinishReason, Generator, GeneratorOptions, Pair, SamplingOptions};
use tailor_modules::lora::LoraConfig;

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

fn model_dir() -> std::path::PathBuf {
    let assets = std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into());
    std::path::Path::new(&assets).join("gemma3-270m")
}

#[test]
fn greedy_generation_matches_transformers_and_repeats() {
    let reference: Reference =
        serde_json::from_str(include_str!("reference/gemma3_forward.json")).unwrap();
    let generator = Generator::load(
        model_dir(),
        &GeneratorOptions {
            max_positions: 128,
            ..Default::default()
        },
    )
    .unwrap();
    let greedy = SamplingOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    for case in &reference.cases {
        let mut streamed = Vec::new();
        let out = generator
            .generate_ids(&case.ids, &greedy, |id, _| {
                streamed.push(id);
                true
            })
            .unwrap();
        assert_eq!(out.token_ids, case.greedy_ids, "greedy continuation");
        assert_eq!(streamed, out.token_ids, "every token is streamed");
        assert_eq!(out.finish_reason, FinishReason::Length);
        let again = generator
            .generate_ids(&case.ids, &greedy, |_, _| true)
            .unwrap();
        assert_eq!(again, out, "temperature 0 is deterministic");
    }

    let prompt = "The capital of France is";
    let sampled = |seed| {
        let options = SamplingOptions {
            max_new_tokens: 8,
            temperature: 1.0,
            top_p: 0.9,
            seed,
            ..Default::default()
        };
        generator.generate(prompt, &options, |_, _| true).unwrap()
    };
    assert_eq!(sampled(3), sampled(3), "a seed repeats a sampled answer");

    // " the capital of the country of France." — cut before the stop sequence.
    let stop = SamplingOptions {
        max_new_tokens: 12,
        stop: vec!["country".into()],
        ..Default::default()
    };
    let out = generator.generate(prompt, &stop, |_, _| true).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(out.text, " the capital of the ");

    let bad = SamplingOptions {
        top_p: 0.0,
        ..Default::default()
    };
    let err = generator.generate(prompt, &bad, |_, _| true).unwrap_err();
    assert!(err.to_string().contains("top_p"), "{err}");
}

/// One SFT step with LoRA lowers the response loss, and the loss ignores the prompt: two
/// pairs with different prompts but one response have different losses only through the
/// context, while changing the response changes what is scored.
#[test]
fn sft_with_lora_lowers_the_response_loss() {
    let generator = Generator::load(
        model_dir(),
        &GeneratorOptions {
            lora: Some(LoraConfig {
                rank: 4,
                alpha: 8.0,
                dropout: 0.0,
                targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
            }),
            adapted_layers: Some(2),
            seed: 1,
            max_positions: 128,
        },
    )
    .unwrap();
    let pairs = vec![
        Pair {
            prompt: "盗窃公私财物，数额较大的，出自哪部法律？".into(),
            response: "中华人民共和国刑法".into(),
        },
        Pair {
            prompt: "为了保护民事主体的合法权益，出自哪部法律？".into(),
            response: "中华人民共和国民法典".into(),
        },
    ];
    let (ids, prompt_len) = generator.encode_pair(&pairs[0]).unwrap();
    let (loss0, count) = generator.sft_loss(&pairs, false).unwrap();
    let expected: usize = pairs
        .iter()
        .map(|p| {
            let (ids, prompt_len) = generator.encode_pair(p).unwrap();
            ids.len() - prompt_len
        })
        .sum();
    assert_eq!(
        count, expected,
        "only response tokens (and <end_of_turn>) are scored"
    );
    assert!(prompt_len > 5 && ids.len() > prompt_len);

    let vars: Vec<candle_core::Var> = generator
        .adapter_vars()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(vars.len(), 2 * 3 * 2);
    let mut opt = candle_nn::AdamW::new(
        vars,
        candle_nn::ParamsAdamW {
            lr: 2e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    use candle_nn::Optimizer;
    for _ in 0..3 {
        let (loss, _) = generator.sft_loss(&pairs, true).unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let (loss1, _) = generator.sft_loss(&pairs, false).unwrap();
    let (l0, l1) = (
        loss0.to_scalar::<f32>().unwrap(),
        loss1.to_scalar::<f32>().unwrap(),
    );
    assert!(l1 < l0 - 0.1, "loss {l0} -> {l1}");

    let files = generator.save_adapter().unwrap();
    let adapter =
        tailor_modules::peft::load(&files.config_json, &files.safetensors, &Device::Cpu).unwrap();
    assert_eq!(adapter.config.task_type.as_deref(), Some("CAUSAL_LM"));
}
