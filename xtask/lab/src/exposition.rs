//! Reading the Prometheus text format that `/metrics` serves.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.labels.get(*k).is_some_and(|have| have == v))
    }
}

/// One scrape, parsed.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// # Panics
    /// On a line that is not valid exposition format: the daemon must never serve one.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_line(line).unwrap_or_else(|| panic!("not exposition format: {line:?}")))
            .collect();
        Self { text: text.to_owned(), samples }
    }

    /// Samples of metric `name` carrying at least `labels`.
    pub fn series<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| s.name == name && s.has(labels))
    }

    /// The value of the one series of `name` with `labels`; `None` if absent.
    ///
    /// # Panics
    /// If several series match: the caller's labels were not specific enough.
    #[must_use]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self.series(name, labels);
        let first = matching.next()?;
        assert!(matching.next().is_none(), "several series of {name} match {labels:?}");
        Some(first.value)
    }

    /// The sum over every series of `name` with `labels`, 0 if there are none.
    #[must_use]
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name, labels).map(|s| s.value).sum()
    }

    /// The one series of counter `name` with `labels` as a whole number, 0 if absent.
    #[must_use]
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        whole(self.value(name, labels).unwrap_or(0.0))
    }

    /// The sum of the counters `name` with `labels` as a whole number.
    #[must_use]
    pub fn count_sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        whole(self.sum(name, labels))
    }
}

/// A counter value as an integer; panics on anything a count cannot be.
fn whole(value: f64) -> u64 {
    assert!(value >= 0.0 && value.fract() == 0.0 && value < 9_007_199_254_740_992.0, "not a count: {value}");
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "checked just above")]
    let count = value as u64;
    count
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    let Some((name, rest)) = head.split_once('{') else {
        return Some(Sample { name: head.to_owned(), labels: BTreeMap::new(), value });
    };
    let body = rest.strip_suffix('}')?;
    Some(Sample { name: name.to_owned(), labels: parse_labels(body)?, value })
}

fn parse_labels(mut body: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !body.is_empty() {
        let (key, rest) = body.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        body = rest[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_with_escapes() {
        let scrape = Scrape::parse("# HELP x y\nx{a=\"1\",b=\"q\\\"uote\"} 3\ny 4.5\n");
        assert_eq!(scrape.value("x", &[("a", "1")]), Some(3.0));
        assert_eq!(scrape.samples[0].labels["b"], "q\"uote");
        assert_eq!(scrape.value("y", &[]), Some(4.5));
        assert_eq!(scrape.value("z", &[]), None);
    }
}
