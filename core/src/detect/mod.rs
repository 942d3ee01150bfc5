//! The detection engine's decisions, pure: folding repeated matches into one alert
//! ([`fold`]). Rule evaluation itself (Sigma) lives in the io crate's `detect`.

pub mod fold;
