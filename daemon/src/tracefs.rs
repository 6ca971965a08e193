//! Tracepoint record layouts, read from the running kernel's tracefs `format` files: field
//! offsets differ between kernels, so none is compiled in.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

/// Where tracefs is usually mounted.
const TRACEFS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The fields of one tracepoint: name to (offset, size).
#[derive(Debug, Clone)]
pub struct TracepointFormat {
    name: String,
    fields: HashMap<String, (usize, usize)>,
}

impl TracepointFormat {
    /// Reads `events/<category>/<name>/format`.
    ///
    /// # Errors
    /// If tracefs is not mounted or the tracepoint does not exist on this kernel.
    pub fn read(category: &str, name: &str) -> Result<Self> {
        let path = TRACEFS
            .iter()
            .map(|root| PathBuf::from(root).join("events").join(category).join(name).join("format"))
            .find(|path| path.exists())
            .with_context(|| {
                format!("no tracepoint {category}:{name}: tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing) or the kernel lacks it")
            })?;
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self::parse(&format!("{category}:{name}"), &text))
    }

    /// Parses a format file's `field:TYPE NAME;\toffset:N;\tsize:N;` lines.
    #[must_use]
    pub fn parse(name: &str, text: &str) -> Self {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let mut declaration = None;
            let (mut offset, mut size) = (None, None);
            for part in line.split(';').map(str::trim) {
                if let Some(field) = part.strip_prefix("field:") {
                    // `const void * skaddr`, `__u8 saddr[4]`: the name is the last word.
                    let last = field.rsplit([' ', '*']).next().unwrap_or_default();
                    declaration = Some(last.split('[').next().unwrap_or_default().to_owned());
                } else if let Some(value) = part.strip_prefix("offset:") {
                    offset = value.parse().ok();
                } else if let Some(value) = part.strip_prefix("size:") {
                    size = value.parse().ok();
                }
            }
            if let (Some(field), Some(offset), Some(size)) = (declaration, offset, size) {
                fields.insert(field, (offset, size));
            }
        }
        Self { name: name.to_owned(), fields }
    }

    /// The offset of `field`, which must be `size` bytes.
    ///
    /// # Errors
    /// If this kernel's tracepoint has no such field, or a field of another size.
    pub fn offset(&self, field: &str, size: usize) -> Result<u16> {
        let Some(&(offset, actual)) = self.fields.get(field) else {
            bail!("tracepoint {} has no field `{field}` on this kernel", self.name);
        };
        if actual != size {
            bail!("tracepoint {} field `{field}` is {actual} bytes on this kernel, not {size}", self.name);
        }
        Ok(u16::try_from(offset)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCK_STATE: &str = "name: inet_sock_set_state\nID: 2287\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;\n\
        \tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n";

    #[test]
    fn fields_are_found_by_name_with_their_offsets() {
        let format = TracepointFormat::parse("sock:inet_sock_set_state", SOCK_STATE);
        assert_eq!(format.offset("skaddr", 8).unwrap(), 8);
        assert_eq!(format.offset("newstate", 4).unwrap(), 20);
        assert_eq!(format.offset("saddr", 4).unwrap(), 32);
        assert!(format.offset("saddr", 16).unwrap_err().to_string().contains("is 4 bytes"));
        assert!(format.offset("daddr", 4).unwrap_err().to_string().contains("no field `daddr`"));
    }
}
