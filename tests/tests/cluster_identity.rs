//! Pod identity on the real kernel: the namespaces and veths `node::pod_facts::gather`
//! reads from a node, and the pods they map to. A node namespace with two pods plugged in
//! the two CNIs' ways (a Flannel-style `veth*` with a /24 address, a Calico-style `cali*`
//! with a /32) and a namespace that holds a pod's address but is plugged into no veth of
//! the node. The API side of the mapping is tested against a mocked API in the daemon's
//! `cluster::tests`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use cniguard::cluster::identity::{PodIndex, PodSummary};
use cniguard::node::namespaces::{self, NetnsScope};
use cniguard::node::pod_facts::{self, NodeFacts};
use cniguard_lab::netns::{NetNs, veth_pair};
use cniguard_lab::require_root;

/// What `gather` finds from inside `node`, as its pod scope (`NetnsScope::Node`) sees it.
fn gather(node: &NetNs) -> NodeFacts {
    node.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(connection);
            let interfaces = cniguard::node::interfaces::list(&handle).await.unwrap();
            let peers: BTreeSet<i32> = interfaces.iter().filter_map(|i| i.peer_netnsid).collect();
            let inventory = namespaces::scan(&handle, NetnsScope::Node, &peers).await.unwrap();
            pod_facts::gather(&handle, &inventory).await.unwrap()
        })
    })
}

fn pod(namespace: &str, name: &str, ip: &str) -> PodSummary {
    PodSummary {
        namespace: namespace.into(),
        name: name.into(),
        ips: vec![ip.parse().unwrap()],
        host_network: false,
    }
}

fn addresses(facts: &NodeFacts) -> BTreeMap<String, BTreeSet<Ipv4Addr>> {
    facts.namespaces.iter().map(|n| (n.label.clone(), n.addresses.iter().copied().collect())).collect()
}

#[test]
fn pods_are_found_by_their_address_and_their_veths_by_the_far_end() {
    require_root!();
    let node = NetNs::new("kid-node").unwrap();
    let flannel_pod = NetNs::new("kid-pod1").unwrap();
    let calico_pod = NetNs::new("kid-pod2").unwrap();
    let stray = NetNs::new("kid-stray").unwrap();
    veth_pair(&node, "vethkid1", &flannel_pod, "eth0").unwrap();
    flannel_pod.ip(&["addr", "add", "10.42.0.5/24", "dev", "eth0"]).unwrap();
    veth_pair(&node, "calikid2", &calico_pod, "eth0").unwrap();
    calico_pod.ip(&["addr", "add", "10.244.1.7/32", "dev", "eth0"]).unwrap();
    // A pod's address in a namespace of this kernel that is not plugged into the node.
    stray.ip(&["link", "add", "stray0", "type", "veth", "peer", "name", "stray1"]).unwrap();
    stray.ip(&["addr", "add", "10.42.0.99/24", "dev", "stray0"]).unwrap();

    let facts = gather(&node);
    let localhost = Ipv4Addr::LOCALHOST;
    let expected: BTreeMap<String, BTreeSet<Ipv4Addr>> = [
        (flannel_pod.name().to_owned(), [localhost, "10.42.0.5".parse().unwrap()].into()),
        (calico_pod.name().to_owned(), [localhost, "10.244.1.7".parse().unwrap()].into()),
    ]
    .into();
    assert_eq!(addresses(&facts), expected);
    // Each veth's far end is the namespace the node gives that id.
    let nsid_of = |label: &str| facts.namespaces.iter().find(|n| n.label == label).unwrap().nsid.unwrap();
    let veths: BTreeMap<&str, i32> = facts.veths.iter().map(|v| (v.name.as_str(), v.peer_nsid)).collect();
    let expected: BTreeMap<&str, i32> =
        [("vethkid1", nsid_of(flannel_pod.name())), ("calikid2", nsid_of(calico_pod.name()))].into();
    assert_eq!(veths, expected);

    let pods = [
        pod("financial-ml", "mlserver-0", "10.42.0.5"),
        pod("kube-system", "coredns-1", "10.244.1.7"),
        pod("default", "stray", "10.42.0.99"),
    ];
    let index = PodIndex::build(&pods, &facts);
    let name = |netns: Option<&str>, interface: Option<&str>| {
        index.lookup(netns, interface).map(|p| format!("{}/{}", p.namespace, p.name))
    };
    assert_eq!(name(None, Some("vethkid1")).as_deref(), Some("financial-ml/mlserver-0"));
    assert_eq!(name(Some(flannel_pod.name()), Some("eth0")).as_deref(), Some("financial-ml/mlserver-0"));
    assert_eq!(name(Some(""), Some("calikid2")).as_deref(), Some("kube-system/coredns-1"));
    assert_eq!(name(Some(calico_pod.name()), None).as_deref(), Some("kube-system/coredns-1"));
    assert_eq!(name(Some(stray.name()), None), None);
    assert_eq!((index.mapped, index.unmapped, index.host_network), (2, 1, 0));

    // The Calico pod's namespace goes (its veth with it): the pod is no longer mapped, even
    // while the API still lists it.
    drop(calico_pod);
    // The kernel tears a namespace down in the background: wait for its veth to go.
    let gone = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(25));
        node.ip(&["link", "show", "calikid2"]).is_err()
    });
    assert!(gone, "calikid2 outlived its namespace");
    let facts = gather(&node);
    assert_eq!(addresses(&facts).keys().collect::<Vec<_>>(), [flannel_pod.name()]);
    assert_eq!(facts.veths.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["vethkid1"]);
    let index = PodIndex::build(&pods, &facts);
    assert_eq!(index.lookup(None, Some("calikid2")), None);
    assert_eq!((index.mapped, index.unmapped), (1, 2));
}
