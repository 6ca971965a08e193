//! Names of BGP NOTIFICATION error codes and subcodes (RFC 4271 section 4.5, RFC 4486,
//! RFC 7313, RFC 8538), for labels and log lines. Labels take only the named values plus
//! `other`, so random codes on the wire cannot grow the series without bound.

/// The label value of a code or subcode without a name.
pub const OTHER: &str = "other";

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
        _ => OTHER,
    }
}

/// The `subcode` label value: its name where the code defines one, else `other`.
#[must_use]
pub fn subcode_name(code: u8, subcode: u8) -> &'static str {
    subcode_known(code, subcode).unwrap_or(OTHER)
}

fn subcode_known(code: u8, subcode: u8) -> Option<&'static str> {
    match (code, subcode) {
        (1..=7, 0) => Some("unspecific"),
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
    }
}

/// Whether a NOTIFICATION with this code ends a session before (or instead of) reaching
/// Established: a header error, an OPEN refused, an FSM error, or the peer rejecting the
/// connection (Cease / connection rejected). UPDATE errors and hold timer expiry come from
/// sessions that were up; the other Cease subcodes are an operator's (shutdown, reset,
/// peer deconfigured, configuration change) or collision resolution: none of them is a
/// session that cannot come up.
#[must_use]
pub const fn before_established(code: u8, subcode: u8) -> bool {
    matches!((code, subcode), (1 | 2 | 5, _) | (6, 5))
}

/// A readable reason for a log line: `cease / administrative shutdown`; numbers where
/// there is no name.
#[must_use]
pub fn describe(code: u8, subcode: u8) -> String {
    let code_text =
        if code_name(code) == OTHER { format!("code {code}") } else { code_name(code).replace('_', " ") };
    let subcode_text = subcode_known(code, subcode)
        .map_or_else(|| format!("subcode {subcode}"), |name| name.replace('_', " "));
    format!("{code_text} / {subcode_text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cease_administrative_shutdown() {
        assert_eq!(code_name(6), "cease");
        assert_eq!(subcode_name(6, 2), "administrative_shutdown");
        assert_eq!(describe(6, 2), "cease / administrative shutdown");
        assert_eq!(subcode_name(6, 200), OTHER);
        assert_eq!(code_name(99), OTHER);
        assert_eq!(subcode_name(99, 0), OTHER, "an unknown code has no unspecific subcode");
        assert_eq!(describe(99, 7), "code 99 / subcode 7");
    }

    #[test]
    fn open_errors_end_a_session_before_it_is_up_and_an_operator_cease_does_not() {
        assert!(before_established(2, 2), "bad peer AS");
        assert!(before_established(1, 1));
        assert!(before_established(6, 5), "connection rejected");
        assert!(!before_established(6, 2), "administrative shutdown");
        assert!(!before_established(6, 3), "peer deconfigured");
        assert!(!before_established(4, 0), "hold timer expired: the session was up");
        assert!(!before_established(3, 1), "an UPDATE error: the session was up");
    }

    #[test]
    fn every_code_and_subcode_maps_into_a_bounded_label_set() {
        let mut pairs = std::collections::BTreeSet::new();
        for code in 0..=u8::MAX {
            for subcode in 0..=u8::MAX {
                pairs.insert((code_name(code), subcode_name(code, subcode)));
            }
        }
        assert_eq!(pairs.len(), 45);
    }
}
