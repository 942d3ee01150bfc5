//! The table of live processes, keyed by (pid, start time).
