//! `mesh service ...`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use mesh_proto::control_client::ControlClient;
use mesh_proto::{
    CreateServiceRequest, EndpointMode, EndpointSpec, GetServiceRequest, HealthConfig,
    ListServicesRequest, ListTasksRequest, Placement, RemoveServiceRequest, RestartCondition,
    RestartPolicy, Service, ServiceMode, ServiceSpec, TaskSpec, TaskView, UpdateConfig,
    UpdateFailureAction, UpdateServiceRequest,
};
use tonic::transport::Channel;

use super::filter::TaskFilter;
use super::format::{self, Format, FormatArgs, InspectFormatArgs};
use super::network::key_values;
use super::progress;
use super::service_flags::{
    parse_network, parse_placement_pref, parse_publish, port_key, replicas_arg,
};
use super::service_view::{
    SERVICE_ROWS, TASK_ROWS, service_json, service_row, task_json, task_row,
};

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Create a service: `mesh service create --name web -- mesh whoami --port 80`.
    Create(Box<CreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// List the tasks of services.
    Ps(PsArgs),
    /// Show services in detail (JSON, or a summary with --pretty).
    Inspect(InspectArgs),
    /// Set the replica count of services: `mesh service scale web=5 api=2`.
    Scale(ScaleArgs),
    /// Change a service.
    Update(Box<UpdateArgs>),
    /// Return a service to its spec before the last change.
    Rollback(RollbackArgs),
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

/// What a rolling update does when too many of its new tasks fail.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureAction {
    /// Stop replacing tasks (Docker's default).
    Pause,
    /// Go on.
    Continue,
    /// Return to the previous spec.
    Rollback,
}

impl From<FailureAction> for UpdateFailureAction {
    fn from(a: FailureAction) -> Self {
        match a {
            FailureAction::Pause => UpdateFailureAction::Pause,
            FailureAction::Continue => UpdateFailureAction::Continue,
            FailureAction::Rollback => UpdateFailureAction::Rollback,
        }
    }
}

/// How a rolling update goes, for create (defaults) and update (changes).
#[derive(Args, Debug)]
pub struct UpdatePolicyArgs {
    /// What an update does when more than --update-max-failure-ratio of the tasks fail:
    /// pause (default), continue or rollback.
    #[arg(long, value_enum)]
    pub update_failure_action: Option<FailureAction>,
    /// How long after a new task is up its failure still counts against the update
    /// (default 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub update_monitor: Option<Duration>,
    /// Share of tasks (0 to 1) that may fail in an update before its failure action
    /// (default 0).
    #[arg(long, value_parser = parse_ratio)]
    pub update_max_failure_ratio: Option<f32>,
}

impl UpdatePolicyArgs {
    fn apply(&self, u: &mut UpdateConfig) {
        if let Some(a) = self.update_failure_action {
            u.set_failure_action(a.into());
        }
        if let Some(d) = self.update_monitor {
            u.monitor_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        }
        if let Some(r) = self.update_max_failure_ratio {
            u.max_failure_ratio = r;
        }
    }
}

fn parse_ratio(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a number from 0 to 1")),
    }
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The service: its name, id or id prefix.
    pub service: String,
    /// Return at once instead of waiting for the rollback to converge.
    #[arg(long, short = 'd')]
    pub detach: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    Any,
    OnFailure,
    None,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Name of the service; its tasks are NAME.1, NAME.2, ...
    #[arg(long)]
    pub name: String,
    /// Number of tasks (replicated mode).
    #[arg(long, allow_negative_numbers = true)]
    pub replicas: Option<i64>,
    /// replicated: --replicas tasks across the cluster; global: one task on every node.
    #[arg(long, value_enum, default_value = "replicated")]
    pub mode: Mode,
    /// Network to attach: NAME, or name=NAME[,alias=A...] (repeatable).
    #[arg(long = "network")]
    pub networks: Vec<String>,
    /// vip: the service name resolves to one virtual IP balanced over the tasks; dnsrr: to
    /// the tasks' own addresses.
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
    /// When a task that stopped is replaced: any (every stop), on-failure (a non-zero exit)
    /// or none.
    #[arg(long, value_enum, default_value = "any")]
    pub restart_condition: Restart,
    /// Wait between a task stopping and its replacement starting (e.g. 500ms, 5s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub restart_delay: Duration,
    /// Give up after this many restarts (0 = never).
    #[arg(long, default_value_t = 0)]
    pub restart_max_attempts: u32,
    /// Time a task gets between SIGTERM and SIGKILL when it is stopped.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub stop_grace_period: Duration,
    /// Tasks replaced at once in a rolling update (0 = all).
    #[arg(long, default_value_t = 1)]
    pub update_parallelism: u32,
    /// Wait between two batches of a rolling update (e.g. 10s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub update_delay: Duration,
    #[command(flatten)]
    pub update_policy: UpdatePolicyArgs,
    /// A label on the service (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Run tasks only on nodes where this holds: node.id, node.hostname, node.role or
    /// node.labels.KEY, then == or !=, then a value (repeatable; all must hold).
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// Spread tasks evenly over the values of a node label: spread=node.labels.KEY
    /// (repeatable, outermost first).
    #[arg(long = "placement-pref", value_name = "spread=node.labels.KEY")]
    pub placement_prefs: Vec<String>,
    /// Most tasks of this service on one node (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub replicas_max_per_node: u64,
    #[command(flatten)]
    pub health: HealthArgs,
    /// Return at once instead of waiting for the tasks to run.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// The command the tasks run.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Docker's health check flags. Without `--health-cmd` the others change an existing check.
#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Command run with /bin/sh -c inside the task's namespaces to check its health (exit
    /// status 0 = healthy); the task receives traffic only while healthy.
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between the end of one check and the start of the next (default 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_interval: Option<Duration>,
    /// A check running longer than this fails (default 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Failures in a row that make the task unhealthy (default 3).
    #[arg(long)]
    pub health_retries: Option<u32>,
    /// Failures in this time after a start do not count, until a check passes (default 0s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_start_period: Option<Duration>,
}

impl HealthArgs {
    /// Applies the flags to `current` (a check to change, or none); an error if settings
    /// are given without any check to apply them to.
    fn apply(&self, current: Option<HealthConfig>) -> anyhow::Result<Option<HealthConfig>> {
        let settings = self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some();
        let mut h = match (&self.health_cmd, current) {
            (Some(cmd), current) => HealthConfig {
                cmd: cmd.clone(),
                ..current.unwrap_or_default()
            },
            (None, Some(current)) => current,
            (None, None) if settings => {
                bail!(
                    "--health-interval, --health-timeout, --health-retries and --health-start-period need --health-cmd"
                )
            }
            (None, None) => return Ok(None),
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if let Some(d) = self.health_interval {
            h.interval_ms = ms(d);
        }
        if let Some(d) = self.health_timeout {
            h.timeout_ms = ms(d);
        }
        if let Some(r) = self.health_retries {
            h.retries = r;
        }
        if let Some(d) = self.health_start_period {
            h.start_period_ms = ms(d);
        }
        Ok(Some(h))
    }
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub format: FormatArgs,
    /// Print service ids only, one a line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print whole ids (tables and templates show their first 12 characters).
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Services: names, ids or id prefixes.
    #[arg(required = true)]
    pub services: Vec<String>,
    #[command(flatten)]
    pub list: TaskListArgs,
}

/// How `service ps` and `node ps` print tasks.
#[derive(Args, Debug)]
pub struct TaskListArgs {
    #[command(flatten)]
    pub format: FormatArgs,
    /// Print task ids only, one a line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print whole ids (tables and templates show their first 12 characters).
    #[arg(long)]
    pub no_trunc: bool,
    /// Only tasks that match: desired-state=running|shutdown|accepted, name=TASK (or its
    /// start), node=HOSTNAME|NODE-ID, id=TASK-ID (or its start). Repeatable: values of one
    /// key are alternatives, different keys must all match.
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
}

/// Prints the tasks `queries` return, filtered and sorted as `service ps` shows them.
pub async fn print_tasks(
    control: &mut ControlClient<Channel>,
    queries: Vec<ListTasksRequest>,
    a: &TaskListArgs,
) -> anyhow::Result<()> {
    let format = Format::parse(&a.format.format, Some(&TASK_ROWS))?;
    let filter = TaskFilter::parse(&a.filters)?;
    let mut all: Vec<TaskView> = Vec::new();
    for q in queries {
        all.extend(control.list_tasks(q).await?.into_inner().tasks);
    }
    all.retain(|t| filter.matches(t));
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
    format::print_list(&TASK_ROWS, &format, a.quiet, &all, task_json, |t| {
        task_row(t, a.no_trunc)
    })
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Services: names, ids or id prefixes.
    #[arg(required = true)]
    pub services: Vec<String>,
    #[command(flatten)]
    pub format: InspectFormatArgs,
    /// Print a summary for people instead of JSON, as `docker service inspect --pretty`.
    #[arg(long, conflicts_with = "format")]
    pub pretty: bool,
}

#[derive(Args, Debug)]
pub struct NamesArgs {
    /// Services: names, ids or id prefixes.
    #[arg(required = true)]
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// SERVICE=REPLICAS pairs.
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// Return at once instead of waiting for the tasks to converge.
    #[arg(long, short = 'd')]
    pub detach: bool,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The service: its name, id or id prefix.
    pub service: String,
    /// Number of tasks (replicated mode).
    #[arg(long, allow_negative_numbers = true)]
    pub replicas: Option<i64>,
    /// Add or replace an environment variable (repeatable).
    #[arg(long)]
    pub env_add: Vec<String>,
    /// Remove an environment variable by name (repeatable).
    #[arg(long)]
    pub env_rm: Vec<String>,
    /// Tasks replaced at once in a rolling update (0 = all).
    #[arg(long)]
    pub update_parallelism: Option<u32>,
    /// Wait between two batches of a rolling update (e.g. 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub update_delay: Option<Duration>,
    #[command(flatten)]
    pub update_policy: UpdatePolicyArgs,
    /// Return to the spec before the last change (as `mesh service rollback`); no other
    /// change may be given with it.
    #[arg(long)]
    pub rollback: bool,
    /// Add a placement constraint (same form as create; repeatable).
    #[arg(long, value_name = "EXPR")]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint, written as it was added (repeatable).
    #[arg(long, value_name = "EXPR")]
    pub constraint_rm: Vec<String>,
    /// Add a placement preference: spread=node.labels.KEY (repeatable).
    #[arg(long, value_name = "spread=node.labels.KEY")]
    pub placement_pref_add: Vec<String>,
    /// Remove a placement preference: spread=node.labels.KEY (repeatable).
    #[arg(long, value_name = "spread=node.labels.KEY")]
    pub placement_pref_rm: Vec<String>,
    /// Most tasks of this service on one node (0 = no limit).
    #[arg(long)]
    pub replicas_max_per_node: Option<u64>,
    #[command(flatten)]
    pub health: HealthArgs,
    /// Remove the service's health check.
    #[arg(long, conflicts_with = "health_cmd")]
    pub no_healthcheck: bool,
    /// Publish another port (same forms as create).
    #[arg(long)]
    pub publish_add: Vec<String>,
    /// Stop publishing a port: PUBLISHED[/PROTOCOL].
    #[arg(long)]
    pub publish_rm: Vec<String>,
    /// Replace every task even if nothing changed.
    #[arg(long)]
    pub force: bool,
    /// Return at once instead of waiting for the update to converge.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// A new command for the tasks.
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl UpdateArgs {
    /// Whether any flag asks for a change of the spec (everything but the service, `-d` and
    /// `--rollback`).
    fn changes_the_spec(&self) -> bool {
        let h = &self.health;
        let p = &self.update_policy;
        self.replicas.is_some()
            || !self.env_add.is_empty()
            || !self.env_rm.is_empty()
            || self.update_parallelism.is_some()
            || self.update_delay.is_some()
            || p.update_failure_action.is_some()
            || p.update_monitor.is_some()
            || p.update_max_failure_ratio.is_some()
            || !self.constraint_add.is_empty()
            || !self.constraint_rm.is_empty()
            || !self.placement_pref_add.is_empty()
            || !self.placement_pref_rm.is_empty()
            || self.replicas_max_per_node.is_some()
            || h.health_cmd.is_some()
            || h.health_interval.is_some()
            || h.health_timeout.is_some()
            || h.health_retries.is_some()
            || h.health_start_period.is_some()
            || self.no_healthcheck
            || !self.publish_add.is_empty()
            || !self.publish_rm.is_empty()
            || self.force
            || !self.command.is_empty()
    }
}

/// `appnet` or `name=appnet,alias=a,alias=b`.
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
            placement: Some(Placement {
                constraints: a.constraints,
                spread: a
                    .placement_prefs
                    .iter()
                    .map(|p| parse_placement_pref("--placement-pref", p))
                    .collect::<anyhow::Result<_>>()?,
                max_replicas: a.replicas_max_per_node,
            })
            .filter(|p| *p != Placement::default()),
            health: a.health.apply(None)?,
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
        update: Some({
            let mut u = UpdateConfig {
                parallelism: a.update_parallelism,
                delay_ms: a.update_delay.as_millis() as u64,
                ..Default::default()
            };
            a.update_policy.apply(&mut u);
            u
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
    let req = UpdateServiceRequest {
        service: svc.id.clone(),
        spec: Some(spec),
        version: svc.version,
        rollback: false,
    };
    send_update(control, svc, req, detach).await
}

/// Sends `req` (a change of `svc`) and, unless `detach`, waits for the service to converge.
async fn send_update(
    control: &mut ControlClient<Channel>,
    svc: Service,
    req: UpdateServiceRequest,
    detach: bool,
) -> anyhow::Result<()> {
    let rollback = req.rollback;
    let updated = control
        .update_service(req)
        .await?
        .into_inner()
        .service
        .unwrap_or_default();
    if detach {
        println!("{}", svc.id);
        return Ok(());
    }
    // A change that replaces tasks starts a rolling update: watch it pause or roll back (a
    // rollback asked for is the update itself).
    let update =
        (updated.spec_version > svc.spec_version).then_some((updated.spec_version, rollback));
    progress::wait_converged(control, &svc.id, update).await
}

/// `mesh service rollback` and `service update --rollback`: back to the previous spec.
async fn rollback(
    control: &mut ControlClient<Channel>,
    service: &str,
    detach: bool,
) -> anyhow::Result<()> {
    let svc = control
        .get_service(GetServiceRequest {
            service: service.to_string(),
        })
        .await?
        .into_inner()
        .service
        .unwrap_or_default();
    let req = UpdateServiceRequest {
        service: svc.id.clone(),
        spec: None,
        version: svc.version,
        rollback: true,
    };
    send_update(control, svc, req, detach).await
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
                progress::wait_converged(control, &id, None).await?;
            }
        }
        ServiceCommand::Ls(a) => {
            let format = Format::parse(&a.format.format, Some(&SERVICE_ROWS))?;
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
            format::print_list(
                &SERVICE_ROWS,
                &format,
                a.quiet,
                &services,
                service_json,
                |v| service_row(v, a.no_trunc),
            )?;
        }
        ServiceCommand::Ps(a) => {
            let queries = a
                .services
                .iter()
                .map(|s| ListTasksRequest {
                    service: s.clone(),
                    node: String::new(),
                })
                .collect();
            print_tasks(control, queries, &a.list).await?;
        }
        ServiceCommand::Inspect(a) if a.pretty => {
            super::service_pretty::print(control, &a.services).await?;
        }
        ServiceCommand::Inspect(a) => {
            let format = Format::parse(&a.format.format, None)?;
            let mut docs = Vec::new();
            for s in a.services {
                docs.push(service_json(
                    &control
                        .get_service(GetServiceRequest { service: s })
                        .await?
                        .into_inner(),
                ));
            }
            format::write_docs(&mut std::io::stdout().lock(), &format, &docs)?;
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
        ServiceCommand::Rollback(a) => rollback(control, &a.service, a.detach).await?,
        ServiceCommand::Update(a) if a.rollback => {
            if a.changes_the_spec() {
                bail!("--rollback: no other change can be given with it");
            }
            rollback(control, &a.service, a.detach).await?
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
                let placement = task.placement.get_or_insert_with(Default::default);
                for rm in &a.constraint_rm {
                    let before = placement.constraints.len();
                    placement
                        .constraints
                        .retain(|c| c.replace(' ', "") != rm.replace(' ', ""));
                    if placement.constraints.len() == before {
                        bail!("--constraint-rm: {rm:?} is not a constraint of this service");
                    }
                }
                placement
                    .constraints
                    .extend(a.constraint_add.iter().cloned());
                for rm in &a.placement_pref_rm {
                    let key = parse_placement_pref("--placement-pref-rm", rm)?;
                    let before = placement.spread.len();
                    placement.spread.retain(|k| *k != key);
                    if placement.spread.len() == before {
                        bail!("--placement-pref-rm: {rm:?} is not a preference of this service");
                    }
                }
                for add in &a.placement_pref_add {
                    placement
                        .spread
                        .push(parse_placement_pref("--placement-pref-add", add)?);
                }
                if let Some(n) = a.replicas_max_per_node {
                    placement.max_replicas = n;
                }
                if task.placement.as_ref() == Some(&Placement::default()) {
                    task.placement = None;
                }
                task.health = if a.no_healthcheck {
                    None
                } else {
                    a.health.apply(task.health.take())?
                };
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
                a.update_policy.apply(update);
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
