//! SONA: continual learning of the fleet's small models. The quality predictor adapts per
//! completed job through a MicroLoRA and consolidates into a BaseLoRA with EWC++ at the
//! fleet's consolidation job, so it improves without forgetting.

pub mod features;
pub mod predictor;
pub mod snapshot;

pub use features::features;
pub use predictor::{Predictor, Sample, Settings};
pub use snapshot::{PoolEstimates, SonaSnapshot};
