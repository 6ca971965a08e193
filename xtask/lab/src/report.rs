//! The demo's report: every node's live page data over the whole run (`/live.json`), the
//! lab's steps, faults and the rollback call as marks on the time axis, in the daemon's
//! page as one self-contained file (`/report-template.html`).

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::lab::Lab;

/// What a step of the lab's record is, for its mark's colour.
fn kind(step: &str) -> &'static str {
    if step.starts_with("inject:") {
        "fault"
    } else if step.starts_with("repair:") {
        "repair"
    } else if step.contains("rollback") {
        "rollback"
    } else {
        "step"
    }
}

/// The report's data: each node's `/live.json` and the lab's record as marks.
///
/// # Errors
/// If a node's daemon does not answer, or answers what is not JSON.
pub fn data(lab: &Lab) -> Result<Value> {
    let mut nodes = Vec::new();
    for (index, node) in lab.topology().nodes.iter().enumerate() {
        let (status, body) = lab.cniguard(index).get("/live.json")?;
        if status != 200 {
            bail!("{}'s /live.json answered {status}: {body}", node.name);
        }
        nodes.push(
            serde_json::from_str::<Value>(&body).with_context(|| format!("{}'s /live.json", node.name))?,
        );
    }
    let marks: Vec<Value> =
        lab.events().iter().map(|e| json!({"t": e.at, "label": e.step, "kind": kind(&e.step)})).collect();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    Ok(json!({"generated_at": now, "nodes": nodes, "marks": marks}))
}

/// `template` (the daemon's `/report-template.html`) with `data` in its `report-data`
/// element.
///
/// # Errors
/// If the template has no such element.
pub fn fill(template: &str, data: &Value) -> Result<String> {
    let marker = "id=\"report-data\">";
    let at = template.find(marker).context("the page has no report-data element")? + marker.len();
    // JSON inside a script element: `</` must not end it.
    let data = data.to_string().replace("</", "<\\/");
    Ok(format!("{}{data}{}", &template[..at], &template[at..]))
}

/// Writes the report of `lab` to `path`.
///
/// # Errors
/// If a daemon does not answer or the file cannot be written.
pub fn write(lab: &Lab, path: &Path) -> Result<()> {
    let (status, template) = lab.cniguard(0).get("/report-template.html")?;
    if status != 200 {
        bail!("/report-template.html answered {status}: {template}");
    }
    let html = fill(&template, &data(lab)?)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_goes_into_its_element_and_cannot_end_it() {
        let template = r#"<body><script type="application/json" id="report-data"></script></body>"#;
        let html = fill(template, &json!({"marks": [{"label": "</script><b>"}]})).unwrap();
        assert_eq!(
            html,
            r#"<body><script type="application/json" id="report-data">{"marks":[{"label":"<\/script><b>"}]}</script></body>"#
        );
        assert!(fill("<body></body>", &json!({})).is_err());
    }

    #[test]
    fn marks_are_told_apart_by_what_the_lab_recorded() {
        assert_eq!(kind("cutover node-1"), "step");
        assert_eq!(kind("inject: block VXLAN on node-3"), "fault");
        assert_eq!(kind("repair: block VXLAN on node-3"), "repair");
        assert_eq!(kind("cniguard: rollback recommended on node-1"), "rollback");
    }
}
