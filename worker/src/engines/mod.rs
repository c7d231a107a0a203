//! Engines shipped with the worker.

pub mod doctest;
pub mod generator;
pub mod measure;
pub mod prompt;
pub mod python;
pub mod refine;

pub use doctest::DoctestEngine;
