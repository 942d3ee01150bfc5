//! The kernel process connector's messages (netlink `cn_msg` carrying `proc_event`), decoded without unsafe code.
