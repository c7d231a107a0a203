//! Engines shipped with the worker.

pub mod doctest;
pub mod python;

pub use doctest::DoctestEngine;
