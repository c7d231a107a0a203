//! Integration tests of the fleet against real nats-servers (one per test), real Python
//! and pytest, and the real `qefleet` binary where a process boundary matters.

mod cloud;
mod connection;
mod consolidation;
mod durability;
mod escalation;
mod failures;
mod inference;
mod memory;
mod observability;
mod operators;
mod results;
mod submission;
mod support;
