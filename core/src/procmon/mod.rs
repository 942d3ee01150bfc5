//! The process collector's decisions, pure: the kernel process connector's wire format
//! ([`netlink`]) and the table of live processes that turns exec, exit and scan
//! observations into new, exit, modified and snapshot events ([`table`]).

pub mod netlink;
pub mod table;
