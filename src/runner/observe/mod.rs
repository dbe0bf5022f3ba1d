//! Looking at a container from outside: its json-file log (`logs`), its processes as the host
//! sees them (`top`), and its cgroup and network counters (`stats`).

pub mod logfilter;
pub mod logs;
pub mod stats;
pub mod top;
