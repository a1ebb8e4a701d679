//! The checks behind hfgate's fuzz targets, shared with the corpus replay test of the main crate.

pub mod checks;
