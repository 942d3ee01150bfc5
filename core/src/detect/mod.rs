//! The detection engine's decisions, pure: folding repeated matches into one alert
//! ([`fold`]) and aggregating the enrichment of an alert ([`enrich`]). Rule evaluation
//! itself (Sigma) lives in the io crate's `detect`.

pub mod enrich;
pub mod fold;
