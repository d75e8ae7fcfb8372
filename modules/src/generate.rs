//! Text generation with Gemma 3 (`lm/gemma3-270m`): the chat template, sampling
//! (temperature, top-p, max tokens, stop sequences) over a key/value cache, supervised
//! fine-tuning with LoRA on prompt–response pairs (loss on the response tokens only), and
//! evaluation by loss, perplexity, exact match and ROUGE-L.
//!
//! The API takes and returns plain values (strings, ids, numbers) so that the gateway's
//! `/generate` and an OpenAI-style chat endpoint can sit on it: [`Generator::generate`]
//! calls back once per token, which is where a stream would write an event.

use std::path::Path;

use anyhow::Context;
use candle_core::{D, DType, Device, IndexOp, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::gguf::GgufFile;
use crate::lora::LoraConfig;
use crate::ops::SeededRng;
use crate::peft::{Adapter, AdapterError, AdapterFiles, BaseFingerprint, peft_name};
use crate::text::gemma3::model::{self, Config, Gemma3Model, KvCache, LoraPlan};
use crate::text::gemma3::tokenizer::GemmaTokenizer;
use crate::text::gemma3::{find_gguf, save_plan};

/// One prompt and the response the model should give.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pair {
    pub prompt: String,
    pub response: String,
}

/// How to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingOptions {
    pub max_new_tokens: usize,
    /// 0 picks the most likely token every time (deterministic).
    pub temperature: f64,
    /// Nucleus sampling: only the most likely tokens whose probabilities sum to `top_p`.
    pub top_p: f64,
    /// Generation ends when the text produced contains one of these (it is cut there).
    pub stop: Vec<String>,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            stop: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingOptions {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err("temperature must be 0 or more".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("top_p must be in (0, 1]".into());
        }
        if self.max_new_tokens == 0 {
            return Err("max_new_tokens must be at least 1".into());
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn (`<end_of_turn>` or `<eos>`).
    EndOfTurn,
    /// A stop sequence appeared.
    Stop,
    /// `max_new_tokens` were produced.
    Length,
}

/// What [`Generator::generate`] returns.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
}

/// Evaluation on held-out pairs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Mean cross-entropy per response token (teacher forcing).
    pub loss: f64,
    pub perplexity: f64,
    /// Share of generated responses equal to the reference (whitespace trimmed).
    pub exact_match: f64,
    /// Mean ROUGE-L F1 over characters (whitespace ignored), which suits Chinese.
    pub rouge_l: f64,
    pub outputs: Vec<String>,
}

/// How to build a [`Generator`].
#[derive(Debug, Clone)]
pub struct GeneratorOptions {
    pub lora: Option<LoraConfig>,
    /// LoRA on this many of the last layers (`None`: all).
    pub adapted_layers: Option<usize>,
    pub seed: u64,
    /// The longest prompt plus response the generator handles, in tokens.
    pub max_positions: usize,
}

impl Default for GeneratorOptions {
    fn default() -> Self {
        Self {
            lora: None,
            adapted_layers: None,
            seed: 0,
            max_positions: 1024,
        }
    }
}

/// Gemma 3 as a generator, frozen or with LoRA adapters.
pub struct Generator {
    model: Gemma3Model,
    tokenizer: GemmaTokenizer,
    plan: Option<LoraPlan>,
    fingerprint: BaseFingerprint,
    base_name: String,
    rng: SeededRng,
    end_of_turn: Option<u32>,
    max_positions: usize,
}

/// Gemma's chat template for one user turn, ending where the model's answer starts.
pub fn chat_prompt(user: &str) -> String {
    format!("<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n")
}

impl Generator {
    /// Loads the GGUF checkpoint at `path` (a file or a folder holding one).
    pub fn load(path: impl AsRef<Path>, options: &GeneratorOptions) -> anyhow::Result<Self> {
        let file = find_gguf(path.as_ref())?;
        let gguf = GgufFile::open(&file)?;
        let cfg = Config::from_gguf(&gguf)?;
        let plan = match &options.lora {
            Some(lora) => {
                lora.validate().map_err(anyhow::Error::msg)?;
                let targets =
                    model::normalize_targets(&lora.targets).map_err(anyhow::Error::msg)?;
                let layers = match options.adapted_layers {
                    Some(0) => anyhow::bail!("adapted_layers must be at least 1"),
                    Some(n) => Some((cfg.num_layers.saturating_sub(n)..cfg.num_layers).collect()),
                    None => None,
                };
                Some(LoraPlan {
                    config: LoraConfig {
                        targets,
                        ..lora.clone()
                    },
                    layers,
                })
            }
            None => None,
        };
        Self::build(&gguf, cfg, plan, options.seed, options.max_positions)
    }

    fn build(
        gguf: &GgufFile,
        cfg: Config,
        plan: Option<LoraPlan>,
        seed: u64,
        max_positions: usize,
    ) -> anyhow::Result<Self> {
        let tokenizer = GemmaTokenizer::from_gguf(gguf)?;
        let rng = SeededRng::new(seed);
        let max_positions = max_positions.clamp(2, cfg.context_length.max(2));
        let model = Gemma3Model::load(gguf, &cfg, plan.as_ref(), &rng, max_positions)
            .with_context(|| format!("loading Gemma 3 from {}", gguf.path().display()))?;
        let fingerprint = BaseFingerprint {
            architecture: model::ARCHITECTURE.into(),
            num_layers: cfg.num_layers,
            hidden_size: cfg.hidden_size,
            sha256: gguf.sha256()?,
        };
        let base_name = gguf
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let end_of_turn = tokenizer.token_id("<end_of_turn>");
        Ok(Self {
            model,
            tokenizer,
            plan,
            fingerprint,
            base_name,
            rng,
            end_of_turn,
            max_positions,
        })
    }

    /// Loads the base with a saved adapter (serving a tuned model version).
    pub fn load_with_adapter(
        path: impl AsRef<Path>,
        adapter: &Adapter,
        max_positions: usize,
    ) -> anyhow::Result<Self> {
        let file = find_gguf(path.as_ref())?;
        let gguf = GgufFile::open(&file)?;
        let cfg = Config::from_gguf(&gguf)?;
        let plan = crate::text::gemma3::plan_of(adapter)?;
        let generator = Self::build(&gguf, cfg, Some(plan), 0, max_positions)?;
        adapter.apply(&generator.fingerprint, &generator.adapter_vars())?;
        Ok(generator)
    }

    pub fn model(&self) -> &Gemma3Model {
        &self.model
    }

    pub fn tokenizer(&self) -> &GemmaTokenizer {
        &self.tokenizer
    }

    /// The trainable adapter tensors with PEFT's names.
    pub fn adapter_vars(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::new();
        for (path, lora) in self.model.lora_layers() {
            vars.push((peft_name(&path, "lora_A"), lora.a().clone()));
            vars.push((peft_name(&path, "lora_B"), lora.b().clone()));
        }
        vars
    }

    /// The adapter as PEFT's two files (`CAUSAL_LM`).
    pub fn save_adapter(&self) -> Result<AdapterFiles, AdapterError> {
        let Some(plan) = &self.plan else {
            return Err(AdapterError::Invalid(
                "the generator has no adapter to save (base model)".into(),
            ));
        };
        save_plan(
            plan,
            &self.fingerprint,
            &self.base_name,
            "CAUSAL_LM",
            &self.adapter_vars(),
        )
    }

    /// Re-seeds LoRA dropout (the training loop calls it before each step).
    pub fn reseed(&self, seed: u64) {
        self.rng.reseed(seed);
    }

    /// `<bos>` and the tokens of `text` (special tokens in it recognized).
    pub fn encode_prompt(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let mut ids = vec![self.tokenizer.bos_id()];
        ids.extend(self.tokenizer.encode_ids(text)?);
        Ok(ids)
    }

    /// Continues `prompt` (raw text; wrap it in [`chat_prompt`] for a chat turn).
    /// `on_token` gets each new token's id and the text it adds; returning `false` stops.
    pub fn generate(
        &self,
        prompt: &str,
        options: &SamplingOptions,
        on_token: impl FnMut(u32, &str) -> bool,
    ) -> anyhow::Result<Generation> {
        let ids = self.encode_prompt(prompt)?;
        self.generate_ids(&ids, options, on_token)
    }

    /// Continues the token ids `prompt` (which should start with `<bos>`).
    pub fn generate_ids(
        &self,
        prompt: &[u32],
        options: &SamplingOptions,
        mut on_token: impl FnMut(u32, &str) -> bool,
    ) -> anyhow::Result<Generation> {
        options.validate().map_err(anyhow::Error::msg)?;
        if prompt.is_empty() {
            anyhow::bail!("the prompt is empty");
        }
        if prompt.len() + options.max_new_tokens > self.max_positions {
            anyhow::bail!(
                "prompt ({} tokens) plus max_new_tokens ({}) exceeds the {} positions this generator handles",
                prompt.len(),
                options.max_new_tokens,
                self.max_positions
            );
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
        let mut cache = KvCache::new(self.model.num_layers());
        let mut input = Tensor::new(prompt, &Device::Cpu)?.unsqueeze(0)?;
        let mut out: Vec<u32> = Vec::new();
        let mut text = String::new();
        let mut finish = FinishReason::Length;
        while out.len() < options.max_new_tokens {
            let logits = self.model.forward_cached(&input, &mut cache)?;
            let t = logits.dim(1)?;
            let last = logits.i((0, t - 1))?.to_vec1::<f32>()?;
            let next = sample(&last, options.temperature, options.top_p, &mut rng);
            if next == self.tokenizer.eos_id() || Some(next) == self.end_of_turn {
                finish = FinishReason::EndOfTurn;
                break;
            }
            out.push(next);
            let decoded = self.tokenizer.decode(&out, true)?;
            let added = decoded.get(text.len()..).unwrap_or("").to_string();
            text = decoded;
            if let Some(cut) = options
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s.as_str()))
                .min()
            {
                text.truncate(cut);
                finish = FinishReason::Stop;
                break;
            }
            if !on_token(next, &added) {
                finish = FinishReason::Stop;
                break;
            }
            input = Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?;
        }
        Ok(Generation {
            text,
            token_ids: out,
            finish_reason: finish,
            prompt_tokens: prompt.len(),
        })
    }

    /// Token ids of a pair in the chat template, and how many of them are the prompt: the
    /// response and its `<end_of_turn>` follow.
    pub fn encode_pair(&self, pair: &Pair) -> anyhow::Result<(Vec<u32>, usize)> {
        let mut ids = self.encode_prompt(&chat_prompt(&pair.prompt))?;
        let prompt_len = ids.len();
        ids.extend(self.tokenizer.encode_ids(&pair.response)?);
        ids.push(self.end_of_turn.unwrap_or(self.tokenizer.eos_id()));
        if ids.len() > self.max_positions {
            anyhow::bail!(
                "a pair of {} tokens exceeds the {} positions this generator handles",
                ids.len(),
                self.max_positions
            );
        }
        Ok((ids, prompt_len))
    }

    /// Mean cross-entropy over the response tokens of `pairs` (prompt tokens carry no
    /// loss), and the number of response tokens. `train` turns LoRA dropout on.
    pub fn sft_loss(&self, pairs: &[Pair], train: bool) -> anyhow::Result<(Tensor, usize)> {
        let encoded = pairs
            .iter()
            .map(|p| self.encode_pair(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let seq = encoded.iter().map(|(ids, _)| ids.len()).max().unwrap_or(1);
        let pad = self.tokenizer.pad_id();
        let mut ids = Vec::with_capacity(pairs.len() * seq);
        // Positions (flattened) whose next token is a response token, and those tokens.
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for (row, (item, prompt_len)) in encoded.iter().enumerate() {
            ids.extend(item.iter().copied().chain(std::iter::repeat(pad)).take(seq));
            for p in (prompt_len - 1)..(item.len() - 1) {
                positions.push((row * seq + p) as u32);
                targets.push(item[p + 1]);
            }
        }
        let count = targets.len();
        let ids = Tensor::from_vec(ids, (pairs.len(), seq), &Device::Cpu)?;
        let hidden = self.model.forward_hidden(&ids, train)?;
        let width = hidden.dim(D::Minus1)?;
        let picked = hidden
            .reshape((pairs.len() * seq, width))?
            .index_select(&Tensor::new(positions.as_slice(), &Device::Cpu)?, 0)?;
        let logits = self.model.logits(&picked)?;
        let targets = Tensor::new(targets.as_slice(), &Device::Cpu)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
        Ok((loss, count))
    }

    /// Loss and perplexity by teacher forcing, and exact match and ROUGE-L of greedy
    /// answers, on held-out pairs.
    pub fn evaluate(
        &self,
        pairs: &[Pair],
        options: &SamplingOptions,
    ) -> anyhow::Result<Evaluation> {
        let (mut total, mut tokens) = (0f64, 0usize);
        for pair in pairs {
            let (loss, n) = self.sft_loss(std::slice::from_ref(pair), false)?;
            total += loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * n as f64;
            tokens += n;
        }
        let loss = total / tokens.max(1) as f64;
        let (mut exact, mut rouge) = (0usize, 0f64);
        let mut outputs = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let generation = self.generate(&chat_prompt(&pair.prompt), options, |_, _| true)?;
            let answer = generation.text.trim().to_string();
            if answer == pair.response.trim() {
                exact += 1;
            }
            rouge += rouge_l(&answer, &pair.response);
            outputs.push(answer);
        }
        let n = pairs.len().max(1) as f64;
        Ok(Evaluation {
            loss,
            perplexity: loss.exp(),
            exact_match: exact as f64 / n,
            rouge_l: rouge / n,
            outputs,
        })
    }
}

/// Picks the next token from `logits`: the most likely at temperature 0, else a draw from
/// the tempered distribution cut to its top-p nucleus.
pub fn sample(logits: &[f32], temperature: f64, top_p: f64, rng: &mut impl Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0)
    };
    if temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / temperature).exp()))
        .collect();
    let sum: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for (id, p) in probs {
        let p = p / sum;
        kept.push((id, p));
        mass += p;
        if mass >= top_p {
            break;
        }
    }
    let mut draw = rng.random_range(0.0..mass);
    for &(id, p) in &kept {
        if draw < p {
            return id;
        }
        draw -= p;
    }
    kept.last().map(|k| k.0).unwrap_or_else(argmax)
}

/// ROUGE-L F1 between two texts over their non-whitespace characters.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let a: Vec<char> = candidate.chars().filter(|c| !c.is_whitespace()).collect();
    let b: Vec<char> = reference.chars().filter(|c| !c.is_whitespace()).collect();
    if a.is_empty() || b.is_empty() {
        return if a.is_empty() && b.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut prev = vec![0usize; b.len() + 1];
    for &ca in &a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = if ca == cb {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        prev = cur;
    }
    let lcs = prev[b.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (p, r) = (lcs / a.len() as f64, lcs / b.len() as f64);
    2.0 * p * r / (p + r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_l_counts_the_longest_common_subsequence() {
        assert_eq!(rouge_l("中华人民共和国", "中华人民共和国"), 1.0);
        // LCS of "abcd" and "acd" is 3: p = 3/4, r = 1.
        assert!((rouge_l("abcd", "acd") - 2.0 * 0.75 / 1.75).abs() < 1e-12);
        assert_eq!(rouge_l("xyz", "abc"), 0.0);
    }

    #[test]
    fn sampling_at_temperature_zero_is_the_argmax_and_top_p_cuts_the_tail() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let logits = [0.0, 3.0, 1.0, 2.9];
        assert_eq!(sample(&logits, 0.0, 1.0, &mut rng), 1);
        // With top_p tiny only the best token is kept, whatever the temperature.
        for _ in 0..20 {
            assert_eq!(sample(&logits, 5.0, 1e-6, &mut rng), 1);
        }
        // With the full distribution at a high temperature other tokens are drawn too.
        let drawn: std::collections::BTreeSet<u32> = (0..200)
            .map(|_| sample(&logits, 5.0, 1.0, &mut rng))
            .collect();
        assert!(drawn.len() >= 3, "{drawn:?}");
    }
}
