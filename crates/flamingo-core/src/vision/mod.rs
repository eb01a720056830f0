//! Vision towers.

pub mod clip;
