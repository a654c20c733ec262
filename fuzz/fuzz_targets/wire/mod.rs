//! What the wire targets share: the application headers of an envelope that tidings would send.

use std::collections::BTreeMap;

use tidings_core::envelope::headers;

/// The headers of a sent envelope, from arbitrary `(tidings' own, name, value)` triples: user
/// names the core refuses are left out, tidings' own names get the reserved prefix, and the
/// names a driver uses for envelope fields (`driver_fields`) are never headers of their own.
pub fn sent_headers(
    raw: Vec<(bool, String, String)>,
    driver_fields: &[&str],
) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (own, name, value) in raw {
        let name = if own {
            format!("{}{name}", headers::RESERVED_PREFIX)
        } else if headers::check_user_name(&name).is_ok() {
            name
        } else {
            continue;
        };
        // tidings' own headers are the core's (status, dead letter), never these names.
        if !driver_fields.contains(&name.as_str()) {
            map.insert(name, value);
        }
    }
    map
}
