//! What the measurements mean for the cutover: the node's migration phase, the pre-cutover
//! baselines, the runbook's rollback triggers over the measurements and the active checks, and the
//! `/status` report.

pub mod baseline;
pub mod phase;
pub mod signals;
pub mod status;
pub mod triggers;
