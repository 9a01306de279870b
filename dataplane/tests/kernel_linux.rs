//! [`LinuxKernel`] from a fresh daemon namespace (`mkl<pid>x<n>-host`, see `host_support`):
//! its parts share the machine's kernel as the fake's share memory. Needs root and `nft`.

mod host_support;

use std::net::Ipv4Addr;

use host_support::{TestHost, UNDERLAY_IP, ifname};
use mesh_dataplane::Kernel;
use mesh_dataplane::kernel::LinuxKernel;
use mesh_dataplane::lb::{Backend, LbChange, LbService};
use mesh_dataplane::overlay::{
    self, GatewayAllocator, LocalEndpoint, NetworkSpec, NodeDataplane, Prefix, TaskId, TaskSandbox,
    Vni,
};

#[test]
fn linux_kernel_parts_work_on_the_namespaces_its_overlay_makes() {
    let t = TestHost::new("mkl");
    let k: Box<dyn Kernel + Send + Sync> = Box::new(
        LinuxKernel::new(t.host.try_clone().expect("handle"), Backend::Nftables).expect("kernel"),
    );
    assert_eq!(k.overlay_mtu(UNDERLAY_IP, None).expect("mtu"), 1450);

    let mut desired = NodeDataplane::new(
        Prefix::new(format!("{}-m-", t.root)).expect("prefix"),
        UNDERLAY_IP,
    );
    let vni = Vni::new(4100).expect("vni");
    desired.upsert_network(NetworkSpec {
        vni,
        gateway: "10.41.0.1/24".parse().expect("cidr"),
        mtu: 1450,
        internal: false,
    });
    let id = TaskId::new("t1").expect("task id");
    let egress = GatewayAllocator::new(&desired.gateway)
        .allocate(&id)
        .expect("address");
    desired.upsert_task(TaskSandbox {
        id: id.clone(),
        endpoints: vec![LocalEndpoint::new(
            vni,
            ifname("eth0"),
            "10.41.0.2/24".parse().expect("cidr"),
        )],
        egress: Some(egress),
    });
    let t1 = desired.prefix.task_netns(&id);
    let service = LbService::new(Ipv4Addr::new(10, 41, 0, 100), [Ipv4Addr::new(10, 41, 0, 2)]);

    assert!(!k.netns_exists(&t1));
    let err = k
        .lb()
        .apply(&t1, &[LbChange::Upsert(service.clone())])
        .expect_err("no namespace yet");
    assert!(err.is_missing_netns(), "{err}");

    overlay::reconcile(k.overlay(), &desired).expect("overlay");
    assert!(k.netns_exists(&t1));
    k.lb()
        .apply(&t1, &[LbChange::Upsert(service.clone())])
        .expect("load balancer");
    assert_eq!(
        k.lb().observe(&t1).expect("observe"),
        [service].into_iter().collect()
    );

    desired.tasks.clear();
    overlay::reconcile(k.overlay(), &desired).expect("overlay");
    assert!(!k.netns_exists(&t1));
}
