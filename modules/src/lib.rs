//! Tailor's ML library: the module catalog, encoders with LoRA, decoders (heads), the
//! blueprint compiler, training, evaluation and the artifact format of a tuned model.
//!
//! It knows nothing of HTTP, SQL or AMQP: it takes bytes and tensors and returns tensors,
//! metrics and artifact bytes (DESIGN.md §2).

pub mod artifact;
pub mod audio;
pub mod blueprint;
pub mod catalog;
pub mod checkpoint;
pub mod encoder;
pub mod estimate;
pub mod evaluate;
pub mod fusion;
pub mod generate;
pub mod gguf;
pub mod heads;
pub mod image;
pub mod layers;
pub mod lora;
pub mod metrics;
pub mod ops;
pub mod package;
pub mod peft;
pub mod pointcloud;
pub mod schedule;
pub mod sensor;
pub mod tabular;
pub mod text;
pub mod train;
