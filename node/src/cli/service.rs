//! `mesh service ...`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use mesh_proto::control_client::ControlClient;
use mesh_proto::{
    CreateServiceRequest, EndpointMode, EndpointSpec, GetServiceRequest, ListServicesRequest,
    ListTasksRequest, NetworkAttachmentConfig, PortConfig, PortProtocol, PublishMode,
    RemoveServiceRequest, RestartCondition, RestartPolicy, ServiceMode, ServiceSpec, ServiceView,
    TaskSpec, TaskView, UpdateConfig, UpdateServiceRequest,
};
use serde_json::{Value, json};
use tabwriter::TabWriter;
use tonic::transport::Channel;

use super::network::key_values;
use super::progress::{self, state_name};
use super::{Format, FormatArgs};

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Create a service: `mesh service create --name web -- mesh whoami --port 80`.
    Create(Box<CreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls(FormatArgs),
    /// List the tasks of services.
    Ps(PsArgs),
    /// Show services in detail (JSON).
    Inspect(NamesArgs),
    /// Set the replica count of services: `mesh service scale web=5 api=2`.
    Scale(ScaleArgs),
    /// Change a service.
    Update(Box<UpdateArgs>),
    /// Remove services.
    #[command(alias = "remove")]
    Rm(NamesArgs),
    /// Print the output of a service's tasks, or of one task: `mesh service logs -f api`.
    Logs(super::logs::LogsArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Replicated,
    Global,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Vip,
    Dnsrr,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    Any,
    OnFailure,
    None,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[arg(long)]
    pub name: String,
    /// Number of tasks (replicated mode).
    #[arg(long, allow_negative_numbers = true)]
    pub replicas: Option<i64>,
    #[arg(long, value_enum, default_value = "replicated")]
    pub mode: Mode,
    /// Network to attach: NAME, or name=NAME[,alias=A...] (repeatable).
    #[arg(long = "network")]
    pub networks: Vec<String>,
    #[arg(long, value_enum, default_value = "vip")]
    pub endpoint_mode: Endpoint,
    /// Publish a port: published=P,target=T[,protocol=udp][,mode=host] or P:T[/udp] (repeatable).
    #[arg(long = "publish", short = 'p')]
    pub publish: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Working directory of the task's process.
    #[arg(long, default_value = "")]
    pub workdir: String,
    #[arg(long, value_enum, default_value = "any")]
    pub restart_condition: Restart,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub restart_delay: Duration,
    /// Give up after this many restarts (0 = never).
    #[arg(long, default_value_t = 0)]
    pub restart_max_attempts: u32,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub stop_grace_period: Duration,
    /// Tasks replaced at once in a rolling update (0 = all).
    #[arg(long, default_value_t = 1)]
    pub update_parallelism: u32,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub update_delay: Duration,
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Return at once instead of waiting for the tasks to run.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// The command the tasks run.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    #[arg(required = true)]
    pub services: Vec<String>,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Args, Debug)]
pub struct NamesArgs {
    #[arg(required = true)]
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// SERVICE=REPLICAS pairs.
    #[arg(required = true)]
    pub targets: Vec<String>,
    #[arg(long, short = 'd')]
    pub detach: bool,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    pub service: String,
    #[arg(long, allow_negative_numbers = true)]
    pub replicas: Option<i64>,
    /// Add or replace an environment variable (repeatable).
    #[arg(long)]
    pub env_add: Vec<String>,
    /// Remove an environment variable by name (repeatable).
    #[arg(long)]
    pub env_rm: Vec<String>,
    #[arg(long)]
    pub update_parallelism: Option<u32>,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub update_delay: Option<Duration>,
    /// Publish another port (same forms as create).
    #[arg(long)]
    pub publish_add: Vec<String>,
    /// Stop publishing a port: PUBLISHED[/PROTOCOL].
    #[arg(long)]
    pub publish_rm: Vec<String>,
    /// Replace every task even if nothing changed.
    #[arg(long)]
    pub force: bool,
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// A new command for the tasks.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `appnet` or `name=appnet,alias=a,alias=b`.
pub fn parse_network(text: &str) -> anyhow::Result<NetworkAttachmentConfig> {
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

fn spec(a: CreateArgs) -> anyhow::Result<ServiceSpec> {
    let mut spec = ServiceSpec {
        name: a.name,
        task: Some(TaskSpec {
            command: a.command,
            env: a.env,
            dir: a.workdir,
            restart: Some(RestartPolicy {
                condition: match a.restart_condition {
                    Restart::Any => RestartCondition::Any,
                    Restart::OnFailure => RestartCondition::OnFailure,
                    Restart::None => RestartCondition::None,
                } as i32,
                delay_ms: a.restart_delay.as_millis() as u64,
                max_attempts: a.restart_max_attempts,
            }),
            stop_grace_ms: a.stop_grace_period.as_millis() as u64,
        }),
        networks: a
            .networks
            .iter()
            .map(|n| parse_network(n))
            .collect::<anyhow::Result<_>>()?,
        endpoint: Some(EndpointSpec {
            mode: if a.endpoint_mode == Endpoint::Dnsrr {
                EndpointMode::Dnsrr
            } else {
                EndpointMode::Vip
            } as i32,
            ports: a
                .publish
                .iter()
                .map(|p| parse_publish(p))
                .collect::<anyhow::Result<_>>()?,
        }),
        update: Some(UpdateConfig {
            parallelism: a.update_parallelism,
            delay_ms: a.update_delay.as_millis() as u64,
        }),
        labels: key_values("--label", &a.labels)?,
        ..Default::default()
    };
    match a.mode {
        Mode::Global => {
            if a.replicas.is_some() {
                bail!("--replicas: cannot be used with --mode global");
            }
            spec.set_mode(ServiceMode::Global);
        }
        Mode::Replicated => spec.replicas = replicas_arg(a.replicas)?.unwrap_or(1),
    }
    Ok(spec)
}

fn mode_text(v: &ServiceView) -> String {
    let mode = v
        .service
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .map(|s| s.mode())
        .unwrap_or_default();
    if mode == ServiceMode::Global {
        "global".into()
    } else {
        "replicated".into()
    }
}

fn ports_text(v: &ServiceView) -> String {
    let ports = v
        .service
        .as_ref()
        .map(|s| s.ports.as_slice())
        .unwrap_or_default();
    ports
        .iter()
        .map(|p| {
            let proto = if p.protocol() == PortProtocol::Udp {
                "udp"
            } else {
                "tcp"
            };
            let mode = if p.publish_mode() == PublishMode::Host {
                " (host)"
            } else {
                ""
            };
            format!("*:{}->{}/{proto}{mode}", p.published_port, p.target_port)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn service_json(v: &ServiceView) -> Value {
    let s = v.service.clone().unwrap_or_default();
    let spec = s.spec.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let restart = task.restart.unwrap_or_default();
    let endpoint = spec.endpoint.clone().unwrap_or_default();
    let port = |p: &PortConfig| {
        json!({
            "protocol": if p.protocol() == PortProtocol::Udp { "udp" } else { "tcp" },
            "target": p.target_port,
            "published": p.published_port,
            "mode": if p.publish_mode() == PublishMode::Host { "host" } else { "ingress" },
        })
    };
    json!({
        "id": s.id,
        "name": spec.name,
        "version": s.version,
        "mode": mode_text(v),
        "replicas": spec.replicas,
        "running": v.running,
        "desired": v.desired,
        "command": task.command,
        "env": task.env,
        "restart": {
            "condition": match restart.condition() { RestartCondition::Any => "any", RestartCondition::OnFailure => "on-failure", RestartCondition::None => "none" },
            "delay_ms": restart.delay_ms,
            "max_attempts": restart.max_attempts,
        },
        // The networks as resolved to ids (the spec keeps what the user typed).
        "networks": if s.networks.is_empty() { &spec.networks } else { &s.networks }.iter().map(|n| json!({"network": n.target, "aliases": n.aliases})).collect::<Vec<_>>(),
        "endpoint_mode": if endpoint.mode() == EndpointMode::Dnsrr { "dnsrr" } else { "vip" },
        "vips": s.vips.iter().map(|v| json!({"network": v.network_id, "addr": v.addr})).collect::<Vec<_>>(),
        "ports": s.ports.iter().map(port).collect::<Vec<_>>(),
        "labels": spec.labels,
        "spec_version": s.spec_version,
        "created_at_ms": s.created_at_ms,
        "updated_at_ms": s.updated_at_ms,
    })
}

pub fn task_json(t: &TaskView) -> Value {
    let task = t.task.clone().unwrap_or_default();
    let st = task.status.clone().unwrap_or_default();
    json!({
        "id": task.id,
        "name": task.name,
        "service": task.service_name,
        "service_id": task.service_id,
        "slot": task.slot,
        "node": t.node_hostname,
        "node_id": task.node_id,
        "desired_state": state_name(task.desired_state()),
        "state": state_name(st.state()),
        "message": st.message,
        "error": st.err,
        "exit_code": st.exit_code,
        "restarts": st.restarts,
        "addresses": task.networks.iter().map(|a| json!({"network": a.network_id, "addr": a.addr, "mac": a.mac})).collect::<Vec<_>>(),
        "spec_version": task.spec_version,
        "updated_at_ms": task.updated_at_ms,
    })
}

async fn update(
    control: &mut ControlClient<Channel>,
    service: &str,
    detach: bool,
    change: impl FnOnce(&mut ServiceSpec) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let current = control
        .get_service(GetServiceRequest {
            service: service.to_string(),
        })
        .await?
        .into_inner();
    let svc = current.service.unwrap_or_default();
    let mut spec = svc.spec.clone().unwrap_or_default();
    change(&mut spec)?;
    control
        .update_service(UpdateServiceRequest {
            service: svc.id.clone(),
            spec: Some(spec),
            version: svc.version,
        })
        .await?;
    if detach {
        println!("{}", svc.id);
        return Ok(());
    }
    progress::wait_converged(control, &svc.id).await
}

fn port_key(text: &str) -> anyhow::Result<(u32, PortProtocol)> {
    let (port, proto) = match text.split_once('/') {
        Some((p, proto)) => (p, parse_protocol("--publish-rm", proto)?),
        None => (text, PortProtocol::Tcp),
    };
    Ok((parse_port_number("--publish-rm", "published", port)?, proto))
}

pub async fn run(control: &mut ControlClient<Channel>, cmd: ServiceCommand) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Create(a) => {
            let detach = a.detach;
            let v = control
                .create_service(CreateServiceRequest {
                    spec: Some(spec(*a)?),
                })
                .await?
                .into_inner();
            let id = v.service.map(|s| s.id).unwrap_or_default();
            if detach {
                println!("{id}");
            } else {
                progress::wait_converged(control, &id).await?;
            }
        }
        ServiceCommand::Ls(f) => {
            let mut services = control
                .list_services(ListServicesRequest {})
                .await?
                .into_inner()
                .services;
            services.sort_by_key(|v| {
                v.service
                    .as_ref()
                    .and_then(|s| s.spec.as_ref())
                    .map(|s| s.name.clone())
            });
            if f.format == Format::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&Value::Array(
                        services.iter().map(service_json).collect()
                    ))?
                );
                return Ok(());
            }
            let mut tw = TabWriter::new(std::io::stdout()).padding(3);
            writeln!(tw, "ID\tNAME\tMODE\tREPLICAS\tPORTS")?;
            for v in &services {
                let s = v.service.clone().unwrap_or_default();
                let name = s.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                writeln!(
                    tw,
                    "{}\t{name}\t{}\t{}/{}\t{}",
                    &s.id[..s.id.len().min(12)],
                    mode_text(v),
                    v.running,
                    v.desired,
                    ports_text(v)
                )?;
            }
            tw.flush()?;
        }
        ServiceCommand::Ps(a) => {
            let mut all: Vec<TaskView> = Vec::new();
            for s in &a.services {
                all.extend(
                    control
                        .list_tasks(ListTasksRequest {
                            service: s.clone(),
                            node: String::new(),
                        })
                        .await?
                        .into_inner()
                        .tasks,
                );
            }
            all.sort_by_key(|t| {
                t.task.as_ref().map(|t| {
                    (
                        t.service_name.clone(),
                        t.slot,
                        t.name.clone(),
                        -t.created_at_ms,
                    )
                })
            });
            if a.format.format == Format::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&Value::Array(
                        all.iter().map(task_json).collect()
                    ))?
                );
                return Ok(());
            }
            let mut tw = TabWriter::new(std::io::stdout()).padding(3);
            writeln!(
                tw,
                "ID\tNAME\tNODE\tDESIRED STATE\tCURRENT STATE\tADDRESSES\tERROR"
            )?;
            for t in &all {
                let task = t.task.clone().unwrap_or_default();
                let st = task.status.clone().unwrap_or_default();
                let addrs = task
                    .networks
                    .iter()
                    .map(|n| n.addr.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                let restarts = if st.restarts > 0 {
                    format!(" ({} restarts)", st.restarts)
                } else {
                    String::new()
                };
                writeln!(
                    tw,
                    "{}\t{}\t{}\t{}\t{}{restarts}\t{addrs}\t{}",
                    &task.id[..task.id.len().min(12)],
                    task.name,
                    t.node_hostname,
                    state_name(task.desired_state()),
                    state_name(st.state()),
                    st.err
                )?;
            }
            tw.flush()?;
        }
        ServiceCommand::Inspect(a) => {
            let mut out = Vec::new();
            for s in a.services {
                out.push(service_json(
                    &control
                        .get_service(GetServiceRequest { service: s })
                        .await?
                        .into_inner(),
                ));
            }
            println!("{}", serde_json::to_string_pretty(&Value::Array(out))?);
        }
        ServiceCommand::Scale(a) => {
            for target in &a.targets {
                let (name, n) = target
                    .split_once('=')
                    .with_context(|| format!("{target:?} is not SERVICE=REPLICAS"))?;
                let replicas: u64 = n
                    .parse()
                    .with_context(|| format!("{target:?}: replicas {n:?} is not a number >= 0"))?;
                update(control, name, a.detach, |spec| {
                    if spec.mode() == ServiceMode::Global {
                        bail!("service {name} is global: it cannot be scaled");
                    }
                    spec.replicas = replicas;
                    Ok(())
                })
                .await?;
            }
        }
        ServiceCommand::Update(a) => {
            let a = *a;
            update(control, &a.service.clone(), a.detach, move |spec| {
                if let Some(r) = replicas_arg(a.replicas)? {
                    if spec.mode() == ServiceMode::Global {
                        bail!("--replicas: the service is global");
                    }
                    spec.replicas = r;
                }
                let task = spec.task.get_or_insert_with(Default::default);
                for rm in &a.env_rm {
                    task.env
                        .retain(|e| e.split_once('=').map(|(k, _)| k) != Some(rm.as_str()));
                }
                for add in &a.env_add {
                    let key = add
                        .split_once('=')
                        .map(|(k, _)| k)
                        .with_context(|| format!("--env-add: {add:?} is not KEY=VALUE"))?;
                    task.env
                        .retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key));
                    task.env.push(add.clone());
                }
                if !a.command.is_empty() {
                    task.command = a.command.clone();
                }
                if a.force {
                    task.env.retain(|e| !e.starts_with("MESH_FORCE_UPDATE="));
                    task.env
                        .push(format!("MESH_FORCE_UPDATE={}", mesh_common::time::now_ms()));
                }
                let update = spec.update.get_or_insert_with(Default::default);
                if let Some(p) = a.update_parallelism {
                    update.parallelism = p;
                }
                if let Some(d) = a.update_delay {
                    update.delay_ms = d.as_millis() as u64;
                }
                let endpoint = spec.endpoint.get_or_insert_with(Default::default);
                for rm in &a.publish_rm {
                    let (port, proto) = port_key(rm)?;
                    let before = endpoint.ports.len();
                    endpoint
                        .ports
                        .retain(|p| !(p.published_port == port && p.protocol() == proto));
                    if endpoint.ports.len() == before {
                        bail!("--publish-rm: port {rm} is not published by this service");
                    }
                }
                for add in &a.publish_add {
                    endpoint.ports.push(parse_publish(add)?);
                }
                Ok(())
            })
            .await?;
        }
        ServiceCommand::Logs(a) => super::logs::run(control, a).await?,
        ServiceCommand::Rm(a) => {
            for s in a.services {
                control
                    .remove_service(RemoveServiceRequest { service: s.clone() })
                    .await?;
                println!("{s}");
            }
        }
    }
    Ok(())
}

/// `--replicas` as a count: parsed signed so that a negative one gets our one-line error
/// rather than clap's usage text.
fn replicas_arg(r: Option<i64>) -> anyhow::Result<Option<u64>> {
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
    fn network_forms() {
        assert_eq!(parse_network("appnet").unwrap().target, "appnet");
        let n = parse_network("name=appnet,alias=db,alias=pg").unwrap();
        assert_eq!((n.target.as_str(), n.aliases.len()), ("appnet", 2));
        assert!(parse_network("alias=x").is_err());
        assert!(parse_network("name=a,bogus=1").is_err());
    }
}
