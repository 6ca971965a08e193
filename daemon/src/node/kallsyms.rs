//! Kernel symbols the programs need the address of, from `/proc/kallsyms`.

/// Where x86-64's `page_offset_base` and `vmemmap_base` are: with them the localhost
/// programs turn a socket buffer fragment's page into the address of its bytes (the
/// kernel's `page_address`), which is where loopback TCP payload sits. `(0, 0)` where this
/// is not x86-64 or the symbols cannot be read (then only the linear part of a packet is
/// read, and HTTP/2 exchanges are not measured on the tracing hooks; `cgroup_skb` reads
/// the payload through the kernel either way).
#[must_use]
pub fn direct_map() -> (u64, u64) {
    if !cfg!(target_arch = "x86_64") {
        return (0, 0);
    }
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else { return (0, 0) };
    let (mut page_offset_base, mut vmemmap_base) = (0, 0);
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(address), Some(_kind), Some(name)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let slot = match name {
            "page_offset_base" => &mut page_offset_base,
            "vmemmap_base" => &mut vmemmap_base,
            _ => continue,
        };
        // Without CAP_SYSLOG (or with kptr_restrict=2) every address reads as 0.
        *slot = u64::from_str_radix(address, 16).unwrap_or(0);
        if page_offset_base != 0 && vmemmap_base != 0 {
            break;
        }
    }
    if page_offset_base == 0 || vmemmap_base == 0 { (0, 0) } else { (page_offset_base, vmemmap_base) }
}
