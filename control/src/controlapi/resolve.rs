//! Finding objects the way users name them, and the rules for names users give.

use std::collections::BTreeMap;

use mesh_proto::{Network, Node, Service};

use crate::error::{ControlError, Result};
use crate::objects::{network_name, service_name};
use crate::store::StoreState;

/// Finds an object by id, name or unique id prefix (names first, as users type them; ids
/// always win).
pub fn resolve<'a, T>(
    map: &'a BTreeMap<String, T>,
    kind: &str,
    reference: &str,
    name_of: impl Fn(&T) -> &str,
) -> Result<&'a T> {
    if reference.is_empty() {
        return Err(ControlError::InvalidArgument(format!(
            "{kind}: a {kind} id or name is required"
        )));
    }
    if let Some(found) = map.get(reference) {
        return Ok(found);
    }
    let pick = |found: Vec<&'a T>, what: &str| -> Option<Result<&'a T>> {
        match found.len() {
            0 => None,
            1 => Some(Ok(found[0])),
            k => Some(Err(ControlError::InvalidArgument(format!(
                "{kind} {reference:?} is ambiguous: {k} {kind}s match that {what}; use an id"
            )))),
        }
    };
    if let Some(r) = pick(
        map.values().filter(|o| name_of(o) == reference).collect(),
        "name",
    ) {
        return r;
    }
    // Names are compared as DNS compares them.
    if let Some(r) = pick(
        map.values()
            .filter(|o| name_of(o).eq_ignore_ascii_case(reference))
            .collect(),
        "name",
    ) {
        return r;
    }
    if let Some(r) = pick(
        map.iter()
            .filter(|(id, _)| id.starts_with(reference))
            .map(|(_, o)| o)
            .collect(),
        "id prefix",
    ) {
        return r;
    }
    Err(ControlError::NotFound(format!(
        "{kind} {reference:?} not found"
    )))
}

/// Finds a node by id, hostname or unique id prefix.
pub fn resolve_node<'a>(s: &'a StoreState, reference: &str) -> Result<&'a Node> {
    resolve(&s.nodes, "node", reference, |n| n.hostname.as_str())
}

/// Finds a service by id, name or unique id prefix.
pub fn resolve_service<'a>(s: &'a StoreState, reference: &str) -> Result<&'a Service> {
    resolve(&s.services, "service", reference, service_name)
}

/// Finds a network by id, name or unique id prefix.
pub fn resolve_network<'a>(s: &'a StoreState, reference: &str) -> Result<&'a Network> {
    resolve(&s.networks, "network", reference, network_name)
}

/// The word DNS names of tasks start with (`tasks.web`): no service or alias may be it.
const TASKS_PREFIX: &str = "tasks";

/// A service name or network alias: what DNS answers for, by Docker's (swarmkit's) rule: a
/// DNS label of letters and digits, with `-` or `_` only between them, at most 63. Dots are
/// not allowed (task names are `service.slot`, and `tasks.service` lists a service's tasks),
/// nor the bare word `tasks`.
pub fn check_dns_name(flag: &str, kind: &str, name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    let ok = !name.is_empty()
        && name.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    if !ok {
        return Err(ControlError::InvalidArgument(format!(
            "{flag}: {name:?} is not a valid {kind} name (letters and digits, with '-' or '_' only between them, at most 63; no dots: DNS uses them for task names)"
        )));
    }
    if name.eq_ignore_ascii_case(TASKS_PREFIX) {
        return Err(ControlError::InvalidArgument(format!(
            "{flag}: {name:?} is reserved (DNS answers `tasks.SERVICE` with a service's tasks)"
        )));
    }
    Ok(())
}

/// Names of networks: letters, digits, `-`, `_` and `.`, starting with a letter or digit.
pub fn check_name(flag: &str, kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        return Ok(());
    }
    Err(ControlError::InvalidArgument(format!(
        "{flag}: {name:?} is not a valid {kind} name (letters, digits, '-', '_' and '.', starting with a letter or digit, at most 63)"
    )))
}
