//! The broker server: the agent's side of the bus. It drives the core broker over real
//! sockets ([`server`]) and keeps durable subscription definitions on disk across a crash
//! ([`durables`]). It decides nothing: routing, limits and access control are the core's.

pub mod durables;
pub mod server;

pub use durables::{DurableStore, DurableStoreError};
pub use server::{ServeOptions, serve, serve_with};
