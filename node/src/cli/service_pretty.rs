//! `mesh service inspect --pretty`: a service for people, in the shape of `docker service
//! inspect --pretty` (`Key:` lines, indented details, a section only when it has something to
//! say). What Docker calls ContainerSpec is the TaskSpec here: a task is a command, not an
//! image.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use mesh_proto::control_client::ControlClient;
use mesh_proto::{
    EndpointMode, GetServiceRequest, ListNetworksRequest, PortProtocol, PublishMode,
    RestartCondition, ServiceMode, ServiceView, UpdateFailureAction,
};

use super::service_view::update_state_name;
use tonic::transport::Channel;

/// Prints `services` (names, ids or id prefixes), a blank line between two.
pub async fn print(
    control: &mut ControlClient<Channel>,
    services: &[String],
) -> anyhow::Result<()> {
    let mut views = Vec::new();
    for s in services {
        let request = GetServiceRequest { service: s.clone() };
        views.push(control.get_service(request).await?.into_inner());
    }
    let names: BTreeMap<String, String> = control
        .list_networks(ListNetworksRequest {})
        .await?
        .into_inner()
        .networks
        .into_iter()
        .filter_map(|v| v.network)
        .map(|n| (n.id, n.spec.unwrap_or_default().name))
        .collect();
    let text: Vec<String> = views.iter().map(|v| render(v, &names)).collect();
    print!("{}", text.join("\n"));
    Ok(())
}

fn duration(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// An argument as a shell would need it to stay one word.
fn word(arg: &str) -> String {
    let plain = !arg.is_empty()
        && !arg
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\'));
    if plain {
        arg.to_string()
    } else {
        format!("{arg:?}")
    }
}

/// The summary of one service. `networks` names network ids (a network missing from it is
/// shown by its id).
pub fn render(v: &ServiceView, networks: &BTreeMap<String, String>) -> String {
    let s = v.service.clone().unwrap_or_default();
    let spec = s.spec.clone().unwrap_or_default();
    let network = |id: &str| {
        networks
            .get(id)
            .filter(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| id.to_string())
    };
    // `writeln!` into a String cannot fail.
    let mut out = String::new();
    let o = &mut out;
    let _ = writeln!(o, "ID:\t\t{}", s.id);
    let _ = writeln!(o, "Name:\t\t{}", spec.name);
    if !spec.labels.is_empty() {
        let _ = writeln!(o, "Labels:");
        let labels: BTreeMap<_, _> = spec.labels.iter().collect();
        for (k, val) in labels {
            if val.is_empty() {
                let _ = writeln!(o, " {k}");
            } else {
                let _ = writeln!(o, " {k}={val}");
            }
        }
    }
    if spec.mode() == ServiceMode::Global {
        let _ = writeln!(o, "Service Mode:\tGlobal");
    } else {
        let _ = writeln!(o, "Service Mode:\tReplicated");
        let _ = writeln!(o, " Replicas:\t{}", spec.replicas);
    }
    if let Some(u) = &s.update_status {
        let _ = writeln!(o, "UpdateStatus:");
        let _ = writeln!(o, " State:\t\t{}", update_state_name(u.state()));
        if !u.message.is_empty() {
            let _ = writeln!(o, " Message:\t{}", u.message);
        }
    }
    let task = spec.task.clone().unwrap_or_default();
    if let Some(p) = &task.placement {
        let _ = writeln!(o, "Placement:");
        if !p.constraints.is_empty() {
            let _ = writeln!(o, " Constraints:\t{}", p.constraints.join(", "));
        }
        for k in &p.spread {
            let _ = writeln!(o, " Preferences:\tspread={k}");
        }
        if p.max_replicas > 0 {
            let _ = writeln!(o, " Max Replicas Per Node: {}", p.max_replicas);
        }
    }
    if !v.problems.is_empty() {
        let _ = writeln!(o, "Problems:");
        for p in &v.problems {
            let _ = writeln!(o, " {p}");
        }
    }
    if let Some(u) = &spec.update {
        let _ = writeln!(o, "UpdateConfig:");
        if u.parallelism == 0 {
            let _ = writeln!(o, " Parallelism:\t0 (all at once)");
        } else {
            let _ = writeln!(o, " Parallelism:\t{}", u.parallelism);
        }
        if u.delay_ms > 0 {
            let _ = writeln!(o, " Delay:\t\t{}", duration(u.delay_ms));
        }
        let action = match u.failure_action() {
            UpdateFailureAction::Pause => "pause",
            UpdateFailureAction::Continue => "continue",
            UpdateFailureAction::Rollback => "rollback",
        };
        let _ = writeln!(o, " On failure:\t{action}");
        let monitor = if u.monitor_ms == 0 {
            5000
        } else {
            u.monitor_ms
        };
        let _ = writeln!(o, " Monitoring Period: {}", duration(monitor));
        let _ = writeln!(o, " Max failure ratio: {}", u.max_failure_ratio);
    }
    if let Some(r) = &task.restart {
        let condition = match r.condition() {
            RestartCondition::Any => "any",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::None => "none",
        };
        let _ = writeln!(o, "RestartPolicy:");
        let _ = writeln!(o, " Condition:\t{condition}");
        if r.delay_ms > 0 {
            let _ = writeln!(o, " Delay:\t\t{}", duration(r.delay_ms));
        }
        if r.max_attempts > 0 {
            let _ = writeln!(o, " Max attempts:\t{}", r.max_attempts);
        }
    }
    let _ = writeln!(o, "TaskSpec:");
    let command: Vec<String> = task.command.iter().map(|a| word(a)).collect();
    let _ = writeln!(o, " Command:\t{}", command.join(" "));
    if !task.env.is_empty() {
        let env: Vec<String> = task.env.iter().map(|e| word(e)).collect();
        let _ = writeln!(o, " Env:\t\t{}", env.join(" "));
    }
    if !task.dir.is_empty() {
        let _ = writeln!(o, " Dir:\t\t{}", task.dir);
    }
    if task.stop_grace_ms > 0 {
        let _ = writeln!(o, " StopGracePeriod: {}", duration(task.stop_grace_ms));
    }
    if let Some(h) = &task.health {
        let (interval, timeout, retries, start) = mesh_common::task::health_settings(h);
        let _ = writeln!(o, " Healthcheck:");
        let _ = writeln!(o, "  Command:\t{}", h.cmd);
        let _ = writeln!(o, "  Interval:\t{}", humantime::format_duration(interval));
        let _ = writeln!(o, "  Timeout:\t{}", humantime::format_duration(timeout));
        let _ = writeln!(o, "  Retries:\t{retries}");
        let _ = writeln!(o, "  StartPeriod:\t{}", humantime::format_duration(start));
    }
    // The networks as resolved to ids (the spec keeps what the user typed).
    let attached = if s.networks.is_empty() {
        &spec.networks
    } else {
        &s.networks
    };
    if !attached.is_empty() {
        let _ = writeln!(o, "Networks:");
        for n in attached {
            let _ = writeln!(o, " {}", network(&n.target));
            if !n.aliases.is_empty() {
                let _ = writeln!(o, "  Aliases:\t{}", n.aliases.join(", "));
            }
        }
    }
    let endpoint = spec.endpoint.clone().unwrap_or_default();
    let mode = if endpoint.mode() == EndpointMode::Dnsrr {
        "dnsrr"
    } else {
        "vip"
    };
    let _ = writeln!(o, "Endpoint Mode:\t{mode}");
    if !s.vips.is_empty() {
        let _ = writeln!(o, "VIPs:");
        for vip in &s.vips {
            let _ = writeln!(o, " {}\t{}", network(&vip.network_id), vip.addr);
        }
    }
    if !s.ports.is_empty() {
        let _ = writeln!(o, "Ports:");
        for p in &s.ports {
            let protocol = if p.protocol() == PortProtocol::Udp {
                "udp"
            } else {
                "tcp"
            };
            let publish = if p.publish_mode() == PublishMode::Host {
                "host"
            } else {
                "ingress"
            };
            let _ = writeln!(o, " PublishedPort = {}", p.published_port);
            let _ = writeln!(o, "  Protocol = {protocol}");
            let _ = writeln!(o, "  TargetPort = {}", p.target_port);
            let _ = writeln!(o, "  PublishMode = {publish}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use mesh_proto::{
        EndpointSpec, NetworkAttachmentConfig, PortConfig, RestartPolicy, Service, ServiceSpec,
        TaskSpec, UpdateConfig, VirtualIp,
    };

    use super::*;

    fn networks() -> BTreeMap<String, String> {
        [("n-app", "appnet"), ("n-ing", "ingress")]
            .into_iter()
            .map(|(id, name)| (id.to_string(), name.to_string()))
            .collect()
    }

    #[test]
    fn a_replicated_service_with_everything_set() {
        let mut spec = ServiceSpec {
            name: "web".into(),
            replicas: 3,
            task: Some(TaskSpec {
                command: vec![
                    "mesh".into(),
                    "whoami".into(),
                    "--name".into(),
                    "a b".into(),
                ],
                env: vec!["K=V".into(), "GREETING=hi there".into()],
                dir: "/srv".into(),
                restart: Some(RestartPolicy {
                    condition: RestartCondition::OnFailure as i32,
                    delay_ms: 1500,
                    max_attempts: 3,
                }),
                stop_grace_ms: 10_000,
                placement: Some(mesh_proto::Placement {
                    constraints: vec!["node.role==manager".into(), "node.labels.zone!=b".into()],
                    spread: vec!["node.labels.rack".into()],
                    max_replicas: 2,
                }),
                health: Some(mesh_proto::HealthConfig {
                    cmd: "curl -f localhost".into(),
                    interval_ms: 2000,
                    ..Default::default()
                }),
            }),
            networks: vec![NetworkAttachmentConfig {
                target: "appnet".into(),
                aliases: vec!["www".into(), "front".into()],
            }],
            endpoint: Some(EndpointSpec {
                mode: EndpointMode::Vip as i32,
                ports: vec![],
            }),
            update: Some(UpdateConfig {
                failure_action: UpdateFailureAction::Rollback as i32,
                monitor_ms: 0,
                max_failure_ratio: 0.25,
                parallelism: 2,
                delay_ms: 60_000,
            }),
            labels: [("tier", "front"), ("alpha", "")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        spec.set_mode(ServiceMode::Replicated);
        let mut host_port = PortConfig {
            target_port: 53,
            published_port: 5353,
            ..Default::default()
        };
        host_port.set_protocol(PortProtocol::Udp);
        host_port.set_publish_mode(PublishMode::Host);
        let view = ServiceView {
            service: Some(Service {
                id: "0123456789abcdef0123456789".into(),
                spec: Some(spec),
                vips: vec![
                    VirtualIp {
                        network_id: "n-app".into(),
                        addr: "10.20.0.2/24".into(),
                    },
                    VirtualIp {
                        network_id: "n-ing".into(),
                        addr: "10.255.0.5/16".into(),
                    },
                ],
                ports: vec![
                    PortConfig {
                        target_port: 80,
                        published_port: 8080,
                        ..Default::default()
                    },
                    host_port,
                ],
                networks: vec![NetworkAttachmentConfig {
                    target: "n-app".into(),
                    aliases: vec!["www".into(), "front".into()],
                }],
                ..Default::default()
            }),
            running: 2,
            desired: 3,
            problems: vec!["1 task: no node is ready".into()],
        };
        let want = "\
ID:\t\t0123456789abcdef0123456789
Name:\t\tweb
Labels:
 alpha
 tier=front
Service Mode:\tReplicated
 Replicas:\t3
Placement:
 Constraints:\tnode.role==manager, node.labels.zone!=b
 Preferences:\tspread=node.labels.rack
 Max Replicas Per Node: 2
Problems:
 1 task: no node is ready
UpdateConfig:
 Parallelism:\t2
 Delay:\t\t1m
 On failure:\trollback
 Monitoring Period: 5s
 Max failure ratio: 0.25
RestartPolicy:
 Condition:\ton-failure
 Delay:\t\t1s 500ms
 Max attempts:\t3
TaskSpec:
 Command:\tmesh whoami --name \"a b\"
 Env:\t\tK=V \"GREETING=hi there\"
 Dir:\t\t/srv
 StopGracePeriod: 10s
 Healthcheck:
  Command:\tcurl -f localhost
  Interval:\t2s
  Timeout:\t30s
  Retries:\t3
  StartPeriod:\t0s
Networks:
 appnet
  Aliases:\twww, front
Endpoint Mode:\tvip
VIPs:
 appnet\t10.20.0.2/24
 ingress\t10.255.0.5/16
Ports:
 PublishedPort = 8080
  Protocol = tcp
  TargetPort = 80
  PublishMode = ingress
 PublishedPort = 5353
  Protocol = udp
  TargetPort = 53
  PublishMode = host
";
        assert_eq!(render(&view, &networks()), want);
    }

    #[test]
    fn empty_sections_are_left_out() {
        let mut spec = ServiceSpec {
            name: "agent".into(),
            task: Some(TaskSpec {
                command: vec!["sleep".into(), "1d".into()],
                ..Default::default()
            }),
            endpoint: Some(EndpointSpec {
                mode: EndpointMode::Dnsrr as i32,
                ports: vec![],
            }),
            ..Default::default()
        };
        spec.set_mode(ServiceMode::Global);
        let view = ServiceView {
            service: Some(Service {
                id: "s1".into(),
                spec: Some(spec),
                // a network the list does not know is shown by its id
                networks: vec![NetworkAttachmentConfig {
                    target: "n-gone".into(),
                    aliases: vec![],
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let want = "\
ID:\t\ts1
Name:\t\tagent
Service Mode:\tGlobal
TaskSpec:
 Command:\tsleep 1d
Networks:
 n-gone
Endpoint Mode:\tdnsrr
";
        assert_eq!(render(&view, &networks()), want);
    }

    #[test]
    fn pretty_and_format_exclude_each_other() {
        use clap::Parser;
        let parse = |args: &[&str]| crate::cli::Cli::try_parse_from(args);
        let ok = parse(&["mesh", "service", "inspect", "--pretty", "web", "db"]);
        assert!(ok.is_ok(), "{ok:?}");
        for format in ["json", "{{.name}}"] {
            let err = parse(&[
                "mesh", "service", "inspect", "--pretty", "--format", format, "web",
            ])
            .unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{err}"
            );
        }
    }
}
