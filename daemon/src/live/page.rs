//! The page's files, embedded at build time: `daemon/page/src` and uPlot from
//! `daemon/page/node_modules` (installed from the npm registry by `npm ci` against the
//! committed lock file: the daemon's build script runs it when they are missing).

/// The answer's headers for every file of the page: nothing but the page's own files may
/// run or load, nothing may frame it, and the browser must not guess types.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One file of the page.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Where the daemon serves it (the page refers to it by this path).
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

macro_rules! page_file {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/page/", $path))
    };
}

pub const INDEX: Asset =
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: page_file!("src/index.html") };

/// The files the page loads, by the paths it loads them from.
pub const FILES: &[Asset] = &[
    Asset { path: "/app.js", content_type: "text/javascript; charset=utf-8", body: page_file!("src/app.js") },
    Asset { path: "/page.css", content_type: "text/css; charset=utf-8", body: page_file!("src/page.css") },
    Asset {
        path: "/uplot.js",
        content_type: "text/javascript; charset=utf-8",
        body: page_file!("node_modules/uplot/dist/uPlot.iife.min.js"),
    },
    Asset {
        path: "/uplot.css",
        content_type: "text/css; charset=utf-8",
        body: page_file!("node_modules/uplot/dist/uPlot.min.css"),
    },
];

/// The page as one file, its scripts and styles inline: what the demo report fills with
/// its data (in the `report-data` element: `cniguard_lab::report`) and writes to disk.
/// Opened from a file, no policy header applies; served, it is an attachment under the
/// same strict policy.
#[must_use]
pub fn report_template() -> String {
    let mut html = INDEX.body.to_owned();
    for asset in FILES {
        let inline = if asset.content_type.starts_with("text/javascript") {
            // `</script` inside a script would end it early.
            format!("<script>{}</script>", asset.body.replace("</script", "<\\/script"))
        } else {
            format!("<style>{}</style>", asset.body)
        };
        html = replace_tag(&html, asset.path, &inline);
    }
    html
}

/// `html` with the tag that refers to `path` (`src="/app.js"`, `href="/page.css"`), and a
/// script's closing tag, replaced by `with`.
fn replace_tag(html: &str, path: &str, with: &str) -> String {
    let Some(at) = html.find(&format!("\"{path}\"")) else { return html.to_owned() };
    let Some(start) = html[..at].rfind('<') else { return html.to_owned() };
    let Some(open_end) = html[at..].find('>').map(|i| at + i + 1) else { return html.to_owned() };
    let end = if html[start..].starts_with("<script") {
        html[open_end..].find("</script>").map_or(open_end, |i| open_end + i + "</script>".len())
    } else {
        open_end
    };
    format!("{}{with}{}", &html[..start], &html[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_template_is_one_file_with_everything_inline() {
        let html = report_template();
        for asset in FILES {
            assert!(!html.contains(&format!("\"{}\"", asset.path)), "{} still referenced", asset.path);
        }
        assert!(html.contains("<script>") && html.contains("<style>"));
        assert!(html.contains("id=\"report-data\""), "the lab's report fills it in");
    }

    #[test]
    fn a_tag_and_its_closing_script_tag_are_replaced() {
        let html =
            r#"<head><script defer src="/app.js"></script><link rel="stylesheet" href="/page.css"></head>"#;
        let html = replace_tag(html, "/app.js", "<script>x</script>");
        let html = replace_tag(&html, "/page.css", "<style>y</style>");
        assert_eq!(html, "<head><script>x</script><style>y</style></head>");
    }
}
