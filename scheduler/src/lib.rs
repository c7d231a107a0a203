pub mod complexity;
