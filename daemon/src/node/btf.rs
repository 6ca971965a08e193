//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find where a field lives
//! in a kernel struct, and the names of an enum's values, on the running kernel.
//!
//! The tracepoint programs read a few fields of kernel objects (the skb's device, a
//! socket's namespace) with `bpf_probe_read_kernel`; their offsets change between kernels,
//! so they are looked up here when the daemon starts and handed to the programs, the way
//! CO-RE relocations would (aya's Rust programs do not get those). The BTF format is a
//! stable kernel ABI (Documentation/bpf/btf.rst).

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail, ensure};

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: u32,
    /// The referenced type of modifiers, typedefs and pointers.
    target: u32,
    members: Vec<Member>,
    values: Vec<(u32, i64)>,
}

/// The types of a BTF blob.
pub struct Btf {
    /// Indexed by type id; id 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<(String, u32), u32>,
}

impl Btf {
    /// The running kernel's BTF.
    ///
    /// # Errors
    /// If the kernel exposes none (CONFIG_DEBUG_INFO_BTF off) or it cannot be parsed.
    pub fn kernel() -> Result<Self> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").context(
            "reading /sys/kernel/btf/vmlinux: the kernel must be built with BTF (CONFIG_DEBUG_INFO_BTF=y)",
        )?;
        Self::parse(&data)
    }

    /// # Errors
    /// If `data` is not little-endian BTF.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let u32_at = |at: usize| -> Result<u32> {
            Ok(u32::from_le_bytes(data.get(at..at + 4).context("BTF cut short")?.try_into()?))
        };
        ensure!(
            data.len() >= 24 && u16::from_le_bytes([data[0], data[1]]) == MAGIC,
            "not (little-endian) BTF"
        );
        let header_len = u32_at(4)? as usize;
        let (type_off, type_len, str_off, str_len) = (u32_at(8)?, u32_at(12)?, u32_at(16)?, u32_at(20)?);
        let strings_start = header_len + str_off as usize;
        let strings = data
            .get(strings_start..strings_start + str_len as usize)
            .context("BTF strings cut short")?
            .to_vec();
        let mut at = header_len + type_off as usize;
        let end = at + type_len as usize;
        let mut types = vec![Type { kind: 0, name: 0, target: 0, members: Vec::new(), values: Vec::new() }];
        while at < end {
            let (name, info, size_or_type) = (u32_at(at)?, u32_at(at + 4)?, u32_at(at + 8)?);
            at += 12;
            let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31 == 1);
            let mut kind_type =
                Type { kind, name, target: size_or_type, members: Vec::new(), values: Vec::new() };
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => {
                    kind_type.target = u32_at(at)?;
                    at += 12;
                }
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let offset = u32_at(at + 8)?;
                        // With kind_flag, the high byte is a bitfield size: the offset is below.
                        let bit_offset = if kind_flag { offset & 0x00ff_ffff } else { offset };
                        kind_type.members.push(Member {
                            name: u32_at(at)?,
                            type_id: u32_at(at + 4)?,
                            bit_offset,
                        });
                        at += 12;
                    }
                }
                KIND_ENUM => {
                    for _ in 0..vlen {
                        #[allow(clippy::cast_possible_wrap, reason = "enum values are stored as i32")]
                        kind_type.values.push((u32_at(at)?, i64::from(u32_at(at + 4)? as i32)));
                        at += 8;
                    }
                }
                KIND_ENUM64 => {
                    for _ in 0..vlen {
                        let value = u64::from(u32_at(at + 4)?) | (u64::from(u32_at(at + 8)?) << 32);
                        #[allow(clippy::cast_possible_wrap, reason = "the enum's bits as they are")]
                        kind_type.values.push((u32_at(at)?, value as i64));
                        at += 12;
                    }
                }
                KIND_FUNC_PROTO => {
                    // Parameters as unnamed-offset members: (name, type).
                    for _ in 0..vlen {
                        kind_type.members.push(Member {
                            name: u32_at(at)?,
                            type_id: u32_at(at + 4)?,
                            bit_offset: 0,
                        });
                        at += 8;
                    }
                }
                KIND_DATASEC => at += 12 * vlen,
                _ => {} // PTR, FWD, TYPEDEF, modifiers, FUNC, FLOAT, TYPE_TAG: nothing more
            }
            types.push(kind_type);
        }
        let mut btf = Self { types, strings, by_name: HashMap::new() };
        for id in 1..btf.types.len() {
            let key = (btf.name(btf.types[id].name).to_owned(), btf.types[id].kind);
            btf.by_name.entry(key).or_insert(u32::try_from(id)?);
        }
        Ok(btf)
    }

    fn name(&self, offset: u32) -> &str {
        let tail = self.strings.get(offset as usize..).unwrap_or_default();
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or_default()
    }

    /// The type behind typedefs and modifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize).map(|t| t.kind) {
                Some(KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) => {
                    id = self.types[id as usize].target;
                }
                _ => break,
            }
        }
        id
    }

    /// The byte offset of `path` (a member, then members of its type...) in struct
    /// `name`, and the type id of the last member. Members of anonymous structs and unions
    /// are found as if they were the struct's own.
    fn path_offset(&self, name: &str, path: &[&str]) -> Result<(u32, u32)> {
        let mut id = *self
            .by_name
            .get(&(name.to_owned(), KIND_STRUCT))
            .with_context(|| format!("no struct {name} in the kernel's BTF"))?;
        let mut bits = 0;
        for field in path {
            let (offset, member_type) = self
                .find_member(self.resolve(id), field)
                .with_context(|| format!("no field {name}.{} in the kernel's BTF", path.join(".")))?;
            bits += offset;
            id = member_type;
        }
        ensure!(bits % 8 == 0, "{name}.{} is a bitfield", path.join("."));
        Ok((bits / 8, id))
    }

    fn find_member(&self, struct_id: u32, field: &str) -> Option<(u32, u32)> {
        let container = self.types.get(struct_id as usize)?;
        if !matches!(container.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for member in &container.members {
            let name = self.name(member.name);
            if name == field {
                return Some((member.bit_offset, member.type_id));
            }
            if name.is_empty()
                && let Some((offset, id)) = self.find_member(self.resolve(member.type_id), field)
            {
                return Some((member.bit_offset + offset, id));
            }
        }
        None
    }

    /// The byte offset of `path` in struct `name` (see [`Self::path_offset`]).
    ///
    /// # Errors
    /// If the struct or a field does not exist on this kernel, or is a bitfield.
    pub fn offset(&self, name: &str, path: &[&str]) -> Result<u16> {
        let (offset, _) = self.path_offset(name, path)?;
        Ok(u16::try_from(offset)?)
    }

    /// The byte size of the type of `path` in struct `name`.
    ///
    /// # Errors
    /// If the field does not exist, or its type has no size (a pointer's is 8).
    pub fn size(&self, name: &str, path: &[&str]) -> Result<u32> {
        let (_, id) = self.path_offset(name, path)?;
        let resolved = &self.types[self.resolve(id) as usize];
        match resolved.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => Ok(resolved.target),
            KIND_PTR => Ok(8),
            kind => bail!("{name}.{} has a type of kind {kind} without a size", path.join(".")),
        }
    }

    /// The values of enum `name`, by value.
    ///
    /// # Errors
    /// If the enum does not exist on this kernel.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(i64, String)>> {
        let id = self
            .by_name
            .get(&(name.to_owned(), KIND_ENUM))
            .or_else(|| self.by_name.get(&(name.to_owned(), KIND_ENUM64)))
            .with_context(|| format!("no enum {name} in the kernel's BTF"))?;
        Ok(self.types[*id as usize].values.iter().map(|(n, v)| (*v, self.name(*n).to_owned())).collect())
    }
}

impl Btf {
    /// A short name of type `id`: `sock*`, `int`, `skb_drop_reason`, `void*`.
    fn type_name(&self, id: u32) -> String {
        let resolved = self.resolve(id);
        match self.types.get(resolved as usize) {
            None => "?".to_owned(),
            Some(_) if resolved == 0 => "void".to_owned(),
            Some(t) if t.kind == KIND_PTR => format!("{}*", self.type_name(t.target)),
            Some(t) => self.name(t.name).to_owned(),
        }
    }

    /// The arguments a raw tracepoint program of `tracepoint` receives, as short type
    /// names, from the kernel's `btf_trace_<tracepoint>` typedef (its first parameter is
    /// the tracepoint's private data, which programs do not get).
    ///
    /// # Errors
    /// If the kernel has no such tracepoint.
    pub fn tracepoint_args(&self, tracepoint: &str) -> Result<Vec<String>> {
        let typedef = format!("btf_trace_{tracepoint}");
        let id = *self.by_name.get(&(typedef.clone(), KIND_TYPEDEF)).with_context(|| {
            format!("this kernel has no tracepoint {tracepoint} (no {typedef} in its BTF)")
        })?;
        let pointer = &self.types[self.types[id as usize].target as usize];
        let proto = self
            .types
            .get(pointer.target as usize)
            .filter(|t| pointer.kind == KIND_PTR && t.kind == KIND_FUNC_PROTO);
        let proto = proto.with_context(|| format!("{typedef} is not a function pointer"))?;
        Ok(proto.members.iter().skip(1).map(|param| self.type_name(param.type_id)).collect())
    }

    /// Checks that `tracepoint`'s arguments begin with `expected` (short type names, see
    /// [`Self::tracepoint_args`]), which the programs read by position; returns them all.
    ///
    /// # Errors
    /// If the tracepoint is missing or its arguments differ: the programs would misread.
    pub fn check_tracepoint(&self, tracepoint: &str, expected: &[&str]) -> Result<Vec<String>> {
        let args = self.tracepoint_args(tracepoint)?;
        ensure!(
            args.len() >= expected.len() && args.iter().zip(expected).all(|(a, e)| a == e),
            "tracepoint {tracepoint} takes ({}) on this kernel, cniguard reads ({}): this kernel is not supported by this probe",
            args.join(", "),
            expected.join(", ")
        );
        Ok(args)
    }

    /// The offsets the tracepoint programs follow (see `probe_common::kernel`).
    ///
    /// # Errors
    /// If a struct or field is missing on this kernel.
    pub fn kernel_offsets(&self) -> Result<probe_common::kernel::KernelOffsets> {
        let fragment = self.fragment_layout()?;
        let direct_map = crate::node::kallsyms::direct_map();
        Ok(probe_common::kernel::KernelOffsets {
            skb_dev: self.offset("sk_buff", &["dev"])?,
            skb_sk: self.offset("sk_buff", &["sk"])?,
            dev_ifindex: self.offset("net_device", &["ifindex"])?,
            dev_net: self.offset("net_device", &["nd_net", "net"])?,
            sock_net: self.offset("sock", &["__sk_common", "skc_net", "net"])?,
            net_inum: self.sized("net", &["ns", "inum"], 4)?,
            skb_tcp_segs: self.offset("sk_buff", &["cb"])? + self.offset("tcp_skb_cb", &["tcp_gso_segs"])?,
            skb_protocol: self.sized("sk_buff", &["protocol"], 2)?,
            skb_head: self.sized("sk_buff", &["head"], 8)?,
            skb_network_header: self.sized("sk_buff", &["network_header"], 2)?,
            sock_family: self.common("skc_family", 2)?,
            sock_daddr: self.common("skc_daddr", 4)?,
            sock_rcv_saddr: self.common("skc_rcv_saddr", 4)?,
            sock_num: self.common("skc_num", 2)?,
            sock_dport: self.common("skc_dport", 2)?,
            sock_protocol: self.sized("sock", &["sk_protocol"], 2)?,
            sock_sport: self.sized("inet_sock", &["inet_sport"], 2)?,
            tcp_srtt_us: self.sized("tcp_sock", &["srtt_us"], 4)?,
            retransmit_err_arg: 0,
            skb_transport_header: self.sized("sk_buff", &["transport_header"], 2)?,
            skb_data: self.sized("sk_buff", &["data"], 8)?,
            skb_len: self.sized("sk_buff", &["len"], 4)?,
            skb_data_len: self.sized("sk_buff", &["data_len"], 4)?,
            skb_end: self.sized("sk_buff", &["end"], 4)?,
            shinfo_nr_frags: self.sized("skb_shared_info", &["nr_frags"], 1)?,
            shinfo_frags: self.offset("skb_shared_info", &["frags"])?,
            frag_len: fragment.1,
            frag_offset: fragment.2,
            page_offset_base_at: direct_map.0,
            vmemmap_base_at: direct_map.1,
            page_struct_size: u64::from(self.struct_size("page")?),
        })
    }

    /// Where a socket buffer fragment's page, length and offset are: `struct skb_frag`
    /// (`netmem`, 6.8 and later) or `struct bio_vec` (before). The programs read the page
    /// pointer at 0 and a fragment as 16 bytes.
    fn fragment_layout(&self) -> Result<(u16, u16, u16)> {
        let (name, fields) = if self.offset("skb_frag", &["netmem"]).is_ok() {
            ("skb_frag", ["netmem", "len", "offset"])
        } else {
            ("bio_vec", ["bv_page", "bv_len", "bv_offset"])
        };
        let layout = (
            self.sized(name, &[fields[0]], 8)?,
            self.sized(name, &[fields[1]], 4)?,
            self.sized(name, &[fields[2]], 4)?,
        );
        ensure!(
            layout.0 == 0 && self.struct_size(name)? == 16,
            "struct {name} is not 16 bytes starting with its page on this kernel: cniguard cannot read fragments"
        );
        Ok(layout)
    }

    /// The byte size of struct `name`.
    ///
    /// # Errors
    /// If the struct does not exist on this kernel.
    pub fn struct_size(&self, name: &str) -> Result<u32> {
        let id = self
            .by_name
            .get(&(name.to_owned(), KIND_STRUCT))
            .with_context(|| format!("no struct {name} in the kernel's BTF"))?;
        Ok(self.types[*id as usize].target)
    }

    /// The offset of `path` in `name`, checked to have the size the programs read.
    fn sized(&self, name: &str, path: &[&str], size: u32) -> Result<u16> {
        let actual = self.size(name, path)?;
        ensure!(
            actual == size,
            "{name}.{} is {actual} bytes on this kernel, cniguard reads {size}",
            path.join(".")
        );
        self.offset(name, path)
    }

    /// The offset of a `struct sock_common` field, which full sockets, request sockets and
    /// timewait sockets all begin with.
    fn common(&self, field: &str, size: u32) -> Result<u16> {
        for (name, common) in
            [("sock", "__sk_common"), ("request_sock", "__req_common"), ("inet_timewait_sock", "__tw_common")]
        {
            ensure!(
                self.offset(name, &[common])? == 0,
                "{name}.{common} is not at the start of {name} on this kernel"
            );
        }
        self.sized("sock_common", &[field], size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF is readable without privileges.
    #[test]
    fn finds_fields_in_anonymous_unions_and_through_typedefs() {
        let btf = Btf::kernel().unwrap();
        // sk_buff.dev sits in anonymous unions and structs on current kernels.
        let dev = btf.offset("sk_buff", &["dev"]).unwrap();
        assert!(dev > 0 && dev < 64, "sk_buff.dev at {dev}");
        assert_eq!(btf.size("sk_buff", &["dev"]).unwrap(), 8);
        assert_eq!(btf.size("net_device", &["ifindex"]).unwrap(), 4);
        // possible_net_t is a struct behind a typedef.
        btf.offset("net_device", &["nd_net", "net"]).unwrap();
        assert_eq!(btf.size("net", &["ns", "inum"]).unwrap(), 4);
        // tcp_gso_segs follows the two sequence numbers, inside an anonymous union.
        assert_eq!(btf.offset("tcp_skb_cb", &["tcp_gso_segs"]).unwrap(), 8);
        assert!(
            btf.offset("sk_buff", &["no_such_field"])
                .unwrap_err()
                .to_string()
                .contains("no field sk_buff.no_such_field")
        );
        btf.kernel_offsets().unwrap();
    }

    #[test]
    fn reads_tracepoint_arguments() {
        let btf = Btf::kernel().unwrap();
        let args = btf.check_tracepoint("kfree_skb", &["sk_buff*", "void*", "skb_drop_reason"]).unwrap();
        assert_eq!(args[0], "sk_buff*");
        btf.check_tracepoint("inet_sock_set_state", &["sock*", "int", "int"]).unwrap();
        // An enum argument by its bare name, as tcp_health looks for it (this kernel is 6.10+).
        btf.check_tracepoint("tcp_send_reset", &["sock*", "sk_buff*", "sk_rst_reason"]).unwrap();
        let wrong = btf.check_tracepoint("tcp_probe", &["sk_buff*"]).unwrap_err().to_string();
        assert!(wrong.contains("takes (sock*, sk_buff*)"), "{wrong}");
        let missing = btf.tracepoint_args("no_such_tracepoint").unwrap_err().to_string();
        assert!(missing.contains("no tracepoint no_such_tracepoint"), "{missing}");
    }

    #[test]
    fn reads_drop_reason_names() {
        let btf = Btf::kernel().unwrap();
        let reasons = btf.enum_values("skb_drop_reason").unwrap();
        assert!(reasons.iter().any(|(_, name)| name == "SKB_DROP_REASON_NETFILTER_DROP"));
        assert!(reasons.iter().any(|(value, name)| name == "SKB_DROP_REASON_NOT_SPECIFIED" && *value == 2));
    }
}
