//! Tailor's ML library: the module catalog, encoders with LoRA, decoders (heads), the
//! blueprint compiler, training, evaluation and the artifact format of a tuned model.
//!
//! It knows nothing of HTTP, SQL or AMQP: it takes bytes and tensors and returns tensors,
//! metrics and artifact bytes (DESIGN.md §2).

pub mod encoder;
pub mod artifact;
pub mod lora;
pub mod ops;
pub mod peft;
pub mod text;
pub mod blueprint;
pub mod catalog;
pub mod metrics;
pub mod schedule;
pub mod heads;
pub mod train;
pub mod evaluate;
