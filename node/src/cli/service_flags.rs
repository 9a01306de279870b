//! Parsing of `mesh service` flags given as free text: `--publish`, `--network`,
//! `--replicas`, `--placement-pref`.

use anyhow::{Context, bail};
use mesh_proto::{NetworkAttachmentConfig, PortConfig, PortProtocol, PublishMode};

/// `NETWORK` or `name=NETWORK[,alias=ALIAS...]`. Neither the network nor an alias may be
/// empty.
pub fn parse_network(text: &str) -> anyhow::Result<NetworkAttachmentConfig> {
    if text.is_empty() {
        bail!("--network: a network name is needed (NETWORK or name=NETWORK[,alias=ALIAS])");
    }
    if !text.contains('=') {
        return Ok(NetworkAttachmentConfig {
            target: text.to_string(),
            aliases: vec![],
        });
    }
    let mut out = NetworkAttachmentConfig::default();
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("name" | "target", v)) => out.target = v.to_string(),
            Some(("alias", "")) => bail!("--network: {text:?} has an empty alias="),
            Some(("alias", v)) => out.aliases.push(v.to_string()),
            _ => bail!("--network: {part:?} in {text:?} is not name=NETWORK or alias=ALIAS"),
        }
    }
    if out.target.is_empty() {
        bail!("--network: {text:?} has no name=NETWORK");
    }
    Ok(out)
}

fn parse_port_number(flag: &str, what: &str, v: &str) -> anyhow::Result<u32> {
    let n: u32 = v
        .parse()
        .with_context(|| format!("{flag}: {what} port {v:?} is not a number"))?;
    if n == 0 || n > 65535 {
        bail!("{flag}: {what} port {n} is out of range (1 to 65535)");
    }
    Ok(n)
}

fn parse_protocol(flag: &str, v: &str) -> anyhow::Result<PortProtocol> {
    match v {
        "tcp" => Ok(PortProtocol::Tcp),
        "udp" => Ok(PortProtocol::Udp),
        other => bail!("{flag}: protocol {other:?} is not tcp or udp"),
    }
}

/// `published=8080,target=80[,protocol=udp][,mode=host]`, `8080:80[/udp]` or `80[/udp]`.
pub fn parse_publish(text: &str) -> anyhow::Result<PortConfig> {
    let flag = "--publish";
    let mut p = PortConfig::default();
    if text.contains('=') {
        for part in text.split(',') {
            match part.split_once('=') {
                Some(("published", v)) => {
                    p.published_port = parse_port_number(flag, "published", v)?
                }
                Some(("target", v)) => p.target_port = parse_port_number(flag, "target", v)?,
                Some(("protocol", v)) => p.set_protocol(parse_protocol(flag, v)?),
                Some(("mode", "ingress")) => p.set_publish_mode(PublishMode::Ingress),
                Some(("mode", "host")) => p.set_publish_mode(PublishMode::Host),
                Some(("mode", other)) => bail!("{flag}: mode {other:?} is not ingress or host"),
                _ => bail!(
                    "{flag}: {part:?} in {text:?} is not published=, target=, protocol= or mode="
                ),
            }
        }
    } else {
        let (ports, proto) = match text.split_once('/') {
            Some((ports, proto)) => (ports, parse_protocol(flag, proto)?),
            None => (text, PortProtocol::Tcp),
        };
        p.set_protocol(proto);
        match ports.split_once(':') {
            Some((published, target)) => {
                p.published_port = parse_port_number(flag, "published", published)?;
                p.target_port = parse_port_number(flag, "target", target)?;
            }
            None => p.target_port = parse_port_number(flag, "target", ports)?,
        }
    }
    if p.target_port == 0 {
        bail!("{flag}: {text:?} has no target port");
    }
    Ok(p)
}

pub fn port_key(text: &str) -> anyhow::Result<(u32, PortProtocol)> {
    let (port, proto) = match text.split_once('/') {
        Some((p, proto)) => (p, parse_protocol("--publish-rm", proto)?),
        None => (text, PortProtocol::Tcp),
    };
    Ok((parse_port_number("--publish-rm", "published", port)?, proto))
}

/// `spread=node.labels.KEY` (Docker's only placement preference) as the key it spreads over.
pub fn parse_placement_pref(flag: &str, text: &str) -> anyhow::Result<String> {
    match text.split_once('=') {
        Some(("spread", key)) if !key.is_empty() => Ok(key.to_string()),
        _ => bail!("{flag}: {text:?} is not spread=node.labels.KEY"),
    }
}

/// `--replicas` as a count: parsed signed so that a negative one gets our one-line error
/// rather than clap's usage text.
pub(super) fn replicas_arg(r: Option<i64>) -> anyhow::Result<Option<u64>> {
    r.map(|n| u64::try_from(n).map_err(|_| anyhow::anyhow!("--replicas: {n} is not a number >= 0")))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_forms() {
        let p = parse_publish("published=8080,target=80,protocol=udp,mode=host").unwrap();
        assert_eq!(
            (
                p.published_port,
                p.target_port,
                p.protocol(),
                p.publish_mode()
            ),
            (8080, 80, PortProtocol::Udp, PublishMode::Host)
        );
        let p = parse_publish("8081:80").unwrap();
        assert_eq!(
            (p.published_port, p.target_port, p.protocol()),
            (8081, 80, PortProtocol::Tcp)
        );
        let p = parse_publish("53/udp").unwrap();
        assert_eq!(
            (p.published_port, p.target_port, p.protocol()),
            (0, 53, PortProtocol::Udp)
        );
        for bad in [
            "published=8080",
            "8080:0",
            "x:80",
            "published=70000,target=80",
            "8080:80/sctp",
            "mode=bogus,target=1",
        ] {
            let err = parse_publish(bad).unwrap_err().to_string();
            assert!(err.starts_with("--publish:"), "{bad}: {err}");
        }
    }

    #[test]
    fn placement_pref_forms() {
        assert_eq!(
            parse_placement_pref("--placement-pref", "spread=node.labels.zone").unwrap(),
            "node.labels.zone"
        );
        for bad in ["spread=", "node.labels.zone", "binpack=node.labels.zone"] {
            let err = parse_placement_pref("--placement-pref", bad).unwrap_err();
            assert!(
                err.to_string().starts_with("--placement-pref: "),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn network_forms() {
        assert_eq!(parse_network("appnet").unwrap().target, "appnet");
        let n = parse_network("name=appnet,alias=db,alias=pg").unwrap();
        assert_eq!((n.target.as_str(), n.aliases.len()), ("appnet", 2));
        assert!(parse_network("alias=x").is_err());
        assert!(parse_network("name=a,bogus=1").is_err());
    }

    #[test]
    fn network_refuses_an_empty_name_or_alias_in_one_line() {
        for bad in [
            "",
            "name=",
            "name=a,alias=",
            "alias=,name=a",
            "name=a,alias=b,alias=",
        ] {
            let err = parse_network(bad).unwrap_err().to_string();
            assert!(err.starts_with("--network:"), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "{bad:?}: {err}");
        }
    }
}
