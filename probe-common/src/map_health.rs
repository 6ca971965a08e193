//! Health of the eBPF maps themselves: inserts refused because a map was full.
//!
//! A full map never costs a packet: the program counts the refusal here (a per-CPU array
//! indexed by [`MapId`]) and lets the packet pass.

/// Which map refused an insert: the index into the `MAP_FULL` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapId {
    IfaceStats = 0,
}

impl MapId {
    pub const COUNT: u32 = 1;
    pub const ALL: [Self; Self::COUNT as usize] = [Self::IfaceStats];

    /// The `map` label value of `cniguard_map_full_total`.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::IfaceStats => "iface_stats",
        }
    }
}
