//! Output formats of the listing and inspect commands: Go templates (`--format`, `template`) and
//! docker's column layout (`table`, a port of Go's tabwriter).

pub mod docker_json;
pub mod table;
pub mod template;
