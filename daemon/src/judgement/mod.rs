//! What the measurements mean for the cutover: the node's migration phase, the pre-cutover
//! baselines, the active checks, the runbook's rollback triggers over them, and the
//! `/status` report.

pub mod baseline;
pub mod checks;
pub mod phase;
pub mod status;
pub mod triggers;
