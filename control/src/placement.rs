//! Placement: which nodes a task may run on (constraints), how a service's tasks spread
//! (preferences) and how many of them one node may hold.
//!
//! Constraints use Docker's expression forms, `node.labels.zone==a`, `node.role!=manager`,
//! parsed once into [`Constraint`]s. A value compares without case, as in Swarm; a label
//! the node does not have never equals a value (so `!=` holds for it).

use std::fmt;

use mesh_proto::{Node, NodeRole, Placement};

/// Most constraints, and spread preferences, one service may have.
pub const MAX_CONSTRAINTS: usize = 32;
/// Longest constraint or preference expression, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 256;

/// What a constraint compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    NodeId,
    Hostname,
    Role,
    Label(String),
}

impl Key {
    fn parse(text: &str) -> Result<Key, String> {
        match text {
            "node.id" => Ok(Key::NodeId),
            "node.hostname" => Ok(Key::Hostname),
            "node.role" => Ok(Key::Role),
            _ => match text.strip_prefix("node.labels.") {
                Some(label) if valid_label_key(label) => Ok(Key::Label(label.to_string())),
                Some(label) => Err(format!(
                    "label key {label:?} is empty or has characters other than letters, digits, '.', '-' and '_'"
                )),
                None => Err(format!(
                    "{text:?} is not node.id, node.hostname, node.role or node.labels.KEY"
                )),
            },
        }
    }

    /// The node's value of this key, if it has one.
    fn of<'n>(&self, node: &'n Node) -> Option<&'n str> {
        match self {
            Key::NodeId => Some(&node.id),
            Key::Hostname => Some(&node.hostname),
            Key::Role => Some(match node.role() {
                NodeRole::Manager => "manager",
                _ => "worker",
            }),
            Key::Label(k) => node
                .spec
                .as_ref()
                .and_then(|s| s.labels.get(k))
                .map(String::as_str),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::NodeId => f.write_str("node.id"),
            Key::Hostname => f.write_str("node.hostname"),
            Key::Role => f.write_str("node.role"),
            Key::Label(k) => write!(f, "node.labels.{k}"),
        }
    }
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// One `KEY==VALUE` or `KEY!=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    pub key: Key,
    pub equal: bool,
    pub value: String,
}

impl Constraint {
    pub fn parse(text: &str) -> Result<Constraint, String> {
        let bad = |why: String| format!("--constraint {text:?}: {why}");
        if text.len() > MAX_EXPRESSION_BYTES {
            return Err(bad(format!("longer than {MAX_EXPRESSION_BYTES} bytes")));
        }
        let (key, value, equal) = if let Some((k, v)) = text.split_once("==") {
            (k, v, true)
        } else if let Some((k, v)) = text.split_once("!=") {
            (k, v, false)
        } else {
            return Err(bad("has no == or != (e.g. node.labels.zone==a)".into()));
        };
        let (key, value) = (key.trim(), value.trim());
        let key = Key::parse(key).map_err(bad)?;
        if value.is_empty() {
            return Err(bad("has no value after the operator".into()));
        }
        if value.contains("==") || value.contains("!=") {
            return Err(bad("has more than one operator".into()));
        }
        if let Some(c) = value.chars().find(|c| c.is_control()) {
            return Err(bad(format!("value has a control character {c:?}")));
        }
        if key == Key::Role && !["manager", "worker"].contains(&value.to_ascii_lowercase().as_str())
        {
            return Err(bad(format!(
                "node.role is manager or worker, not {value:?}"
            )));
        }
        Ok(Constraint {
            key,
            equal,
            value: value.to_string(),
        })
    }

    /// Whether `node` satisfies this constraint.
    pub fn holds(&self, node: &Node) -> bool {
        let equal = self
            .key
            .of(node)
            .is_some_and(|v| v.eq_ignore_ascii_case(&self.value));
        equal == self.equal
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.equal { "==" } else { "!=" };
        write!(f, "{}{op}{}", self.key, self.value)
    }
}

/// A task spec's placement, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub constraints: Vec<Constraint>,
    /// Label keys to spread over, outermost first.
    pub spread: Vec<String>,
    /// 0 = no limit.
    pub max_per_node: u64,
}

impl Rules {
    /// Parses and checks a placement as the user gave it.
    pub fn parse(p: &Placement) -> Result<Rules, String> {
        if p.constraints.len() > MAX_CONSTRAINTS {
            return Err(format!(
                "--constraint: {} given, at most {MAX_CONSTRAINTS}",
                p.constraints.len()
            ));
        }
        if p.spread.len() > MAX_CONSTRAINTS {
            return Err(format!(
                "--placement-pref: {} given, at most {MAX_CONSTRAINTS}",
                p.spread.len()
            ));
        }
        let constraints = p
            .constraints
            .iter()
            .map(|c| Constraint::parse(c))
            .collect::<Result<_, _>>()?;
        let spread = p
            .spread
            .iter()
            .map(|s| match Key::parse(s.trim()) {
                Ok(Key::Label(k)) => Ok(k),
                Ok(other) => Err(format!(
                    "--placement-pref spread={s}: only node.labels.KEY can be spread over, not {other}"
                )),
                Err(why) => Err(format!("--placement-pref spread={s}: {why}")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Rules {
            constraints,
            spread,
            max_per_node: p.max_replicas,
        })
    }

    /// The rules of a stored task spec. A stored spec passed [`Rules::parse`] when it was
    /// written; one that does not parse any more (a newer writer) places nothing rather
    /// than ignoring what it asked for.
    pub fn of(p: Option<&Placement>) -> Rules {
        match p {
            None => Rules::default(),
            Some(p) => Rules::parse(p).unwrap_or_else(|_| Rules {
                constraints: vec![Constraint {
                    key: Key::NodeId,
                    equal: true,
                    value: String::new(),
                }],
                ..Rules::default()
            }),
        }
    }

    /// The first constraint `node` fails, if any.
    pub fn unmet(&self, node: &Node) -> Option<&Constraint> {
        self.constraints.iter().find(|c| !c.holds(node))
    }

    /// Whether `node` satisfies every constraint.
    pub fn fits(&self, node: &Node) -> bool {
        self.unmet(node).is_none()
    }

    /// The node's group at spread level `level` (its values of the first `level + 1` keys;
    /// a missing label is the empty value, one group of its own).
    pub fn group<'n>(&self, node: &'n Node, level: usize) -> Vec<&'n str> {
        self.spread[..=level]
            .iter()
            .map(|k| {
                node.spec
                    .as_ref()
                    .and_then(|s| s.labels.get(k))
                    .map_or("", String::as_str)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use mesh_proto::NodeSpec;

    use super::*;

    fn node(id: &str, host: &str, role: NodeRole, labels: &[(&str, &str)]) -> Node {
        let mut n = Node {
            id: id.into(),
            hostname: host.into(),
            spec: Some(NodeSpec {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        n.set_role(role);
        n
    }

    #[test]
    fn each_constraint_form_matches_as_docker_does() {
        let m = node("n1", "Alpha", NodeRole::Manager, &[("zone", "A")]);
        let w = node("n2", "beta", NodeRole::Worker, &[]);
        let holds = |c: &str, n: &Node| Constraint::parse(c).unwrap().holds(n);
        assert!(holds("node.role==manager", &m) && !holds("node.role==manager", &w));
        assert!(holds("node.role!=manager", &w));
        assert!(
            holds("node.hostname==alpha", &m),
            "values compare without case"
        );
        assert!(holds("node.hostname!=alpha", &w));
        assert!(holds("node.id==n2", &w) && !holds("node.id==n2", &m));
        assert!(holds("node.labels.zone==a", &m));
        assert!(
            !holds("node.labels.zone==a", &w),
            "a missing label equals nothing"
        );
        assert!(holds("node.labels.zone!=a", &w));
        assert!(
            holds(" node.labels.zone == A ", &m),
            "spaces around the parts"
        );
    }

    #[test]
    fn bad_expressions_get_one_line_naming_them() {
        for (bad, why) in [
            ("node.labels.zone", "no == or !="),
            ("node.labels.zone==", "no value"),
            ("node.labels.==a", "label key"),
            ("node.platform.os==linux", "not node.id"),
            ("engine.labels.x==1", "not node.id"),
            ("node.role==boss", "manager or worker"),
            ("node.labels.a==b==c", "more than one operator"),
            ("node.labels.a==b\n", ""),
        ] {
            match Constraint::parse(bad) {
                Err(e) => {
                    assert!(e.starts_with("--constraint "), "{bad}: {e}");
                    assert!(e.contains(why), "{bad}: {e}");
                    assert!(!e.contains('\n'), "{bad}: {e}");
                }
                Ok(c) if bad.ends_with('\n') => assert_eq!(c.value, "b", "trimmed"),
                Ok(c) => panic!("{bad} parsed as {c:?}"),
            }
        }
        let long = format!("node.labels.k=={}", "v".repeat(300));
        assert!(
            Constraint::parse(&long)
                .unwrap_err()
                .contains("longer than")
        );
        let many = Placement {
            constraints: vec!["node.role==manager".into(); MAX_CONSTRAINTS + 1],
            ..Default::default()
        };
        assert!(Rules::parse(&many).unwrap_err().contains("at most"));
        let spread = Placement {
            spread: vec!["node.hostname".into()],
            ..Default::default()
        };
        assert!(
            Rules::parse(&spread)
                .unwrap_err()
                .contains("only node.labels")
        );
    }

    #[test]
    fn a_stored_placement_that_does_not_parse_fits_no_node() {
        let p = Placement {
            constraints: vec!["nonsense".into()],
            ..Default::default()
        };
        let n = node("n1", "a", NodeRole::Worker, &[]);
        assert!(!Rules::of(Some(&p)).fits(&n));
        assert!(Rules::of(None).fits(&n));
    }
}
