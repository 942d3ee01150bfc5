//! The collector-side runtime, shared by every collector binary (procmond first):
//! staying registered with the agent ([`registration`]), the write-ahead log file
//! ([`wal`]) and publishing through it ([`publisher`]), and the process source
//! ([`process`]). A collector binary parses its flags and wires these together.

pub mod process;
pub mod publisher;
pub mod registration;
pub mod wal;

pub use registration::keep_registered;
