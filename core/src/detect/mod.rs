//! Detection in the agent: the pure machines of the engine.

pub mod enrich;
