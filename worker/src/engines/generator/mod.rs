//! The local generator: tests synthesised from the module itself, no LLM.

pub mod inputs;
pub mod targets;
