#![no_main]
//! Fuzz target: see `daemoneye_sim::fuzz::wal_replay` for the properties it checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| daemoneye_sim::fuzz::wal_replay(data));
