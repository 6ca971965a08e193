//! Names of BGP NOTIFICATION error codes and subcodes (RFC 4271 section 4.5, RFC 4486,
//! RFC 7313, RFC 8538), for labels and log lines.

/// The `code` label value.
#[must_use]
pub fn code_name(code: u8) -> &'static str {
    match code {
        1 => "message_header_error",
        2 => "open_message_error",
        3 => "update_message_error",
        4 => "hold_timer_expired",
        5 => "fsm_error",
        6 => "cease",
        7 => "route_refresh_message_error",
        _ => "unknown",
    }
}

/// The `subcode` label value: its name where the code defines one, else the number.
#[must_use]
pub fn subcode_name(code: u8, subcode: u8) -> String {
    let name = match (code, subcode) {
        (_, 0) => Some("unspecific"),
        (1, 1) => Some("connection_not_synchronized"),
        (1, 2) => Some("bad_message_length"),
        (1, 3) => Some("bad_message_type"),
        (2, 1) => Some("unsupported_version_number"),
        (2, 2) => Some("bad_peer_as"),
        (2, 3) => Some("bad_bgp_identifier"),
        (2, 4) => Some("unsupported_optional_parameter"),
        (2, 6) => Some("unacceptable_hold_time"),
        (2, 7) => Some("unsupported_capability"),
        (3, 1) => Some("malformed_attribute_list"),
        (3, 2) => Some("unrecognized_well_known_attribute"),
        (3, 3) => Some("missing_well_known_attribute"),
        (3, 4) => Some("attribute_flags_error"),
        (3, 5) => Some("attribute_length_error"),
        (3, 6) => Some("invalid_origin_attribute"),
        (3, 8) => Some("invalid_next_hop_attribute"),
        (3, 9) => Some("optional_attribute_error"),
        (3, 10) => Some("invalid_network_field"),
        (3, 11) => Some("malformed_as_path"),
        (6, 1) => Some("maximum_prefixes_reached"),
        (6, 2) => Some("administrative_shutdown"),
        (6, 3) => Some("peer_deconfigured"),
        (6, 4) => Some("administrative_reset"),
        (6, 5) => Some("connection_rejected"),
        (6, 6) => Some("other_configuration_change"),
        (6, 7) => Some("connection_collision_resolution"),
        (6, 8) => Some("out_of_resources"),
        (6, 9) => Some("hard_reset"),
        (6, 10) => Some("bfd_down"),
        (7, 1) => Some("invalid_message_length"),
        _ => None,
    };
    name.map_or_else(|| subcode.to_string(), str::to_owned)
}

/// A readable reason for a log line: `cease / administrative shutdown`.
#[must_use]
pub fn describe(code: u8, subcode: u8) -> String {
    format!("{} / {}", code_name(code).replace('_', " "), subcode_name(code, subcode).replace('_', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cease_administrative_shutdown() {
        assert_eq!(code_name(6), "cease");
        assert_eq!(subcode_name(6, 2), "administrative_shutdown");
        assert_eq!(describe(6, 2), "cease / administrative shutdown");
        assert_eq!(subcode_name(6, 200), "200");
        assert_eq!(code_name(99), "unknown");
    }
}
