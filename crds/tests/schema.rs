//! The generated CRDs: committed YAML is current, defaults agree, and the rules are where they belong.

use kube::CustomResourceExt as _;
use kubeha_crds::{
    ElectionSpec, HighAvailabilityCluster, HighAvailabilityClusterSpec, HighAvailabilityMemberSpec, Interval,
    ProxySpec, VrrpSpec, fault_tolerance,
};

#[test]
fn committed_crd_yaml_is_what_crdgen_writes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml");
    for (file, generated) in kubeha_crds::crd_yaml() {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == generated,
            "crds/yaml/{file} is stale: run `cargo run -p kubeha-crds --bin crdgen` and commit the result"
        );
    }
}

#[test]
fn the_chart_carries_the_same_crds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kubeha/templates");
    for (file, generated) in kubeha_crds::chart_crd_templates() {
        let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        assert!(
            committed == generated,
            "charts/kubeha/templates/{file} is stale: run `cargo run -p kubeha-crds --bin crdgen` and commit the result"
        );
    }
}

#[test]
fn fault_tolerance_is_what_a_majority_allows() {
    let table = [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (6, 2), (7, 3)];
    for (masters, tolerated) in table {
        assert_eq!(fault_tolerance(masters), tolerated, "{masters} masters");
    }
}

#[test]
fn an_omitted_section_means_the_documented_defaults() {
    let spec: HighAvailabilityClusterSpec =
        serde_json::from_value(serde_json::json!({"vip": "198.51.100.10/24", "vrid": 51, "interface": "eth0"}))
            .unwrap();
    assert_eq!(spec.vrrp, VrrpSpec::default());
    assert_eq!(spec.vrrp.version, 3);
    assert_eq!(spec.vrrp.advert_interval, Interval::from_millis(100));
    assert!(spec.vrrp.preempt);
    assert_eq!(spec.vrrp.garp.repeat, 5);
    assert_eq!(spec.vrrp.garp.delay, Interval::from_secs(5));
    assert_eq!(spec.proxy, ProxySpec::default());
    assert_eq!((spec.proxy.port, spec.proxy.backend_port), (8443, 6443));
    assert_eq!(spec.proxy.idle_timeout, None, "no idle timeout: watches must survive");
    assert_eq!(spec.election, ElectionSpec::default());
    assert_eq!(
        (spec.election.lease_duration, spec.election.renew_deadline, spec.election.retry_period),
        (Interval::from_secs(15), Interval::from_secs(10), Interval::from_secs(2))
    );
    assert!(spec.election.quorum_fencing);
    assert_eq!(spec.health.path, "/readyz");
    assert_eq!(spec.masters.nodes, None);
}

#[test]
fn the_schema_defaults_match_the_rust_defaults() {
    // The API server fills in the schema's defaults; the operator deserialises with serde's. They must agree,
    // or an object would mean one thing to kubectl and another to kubeha.
    let crd = serde_json::to_value(HighAvailabilityCluster::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(spec["vrrp"]["default"], serde_json::to_value(VrrpSpec::default()).unwrap());
    assert_eq!(spec["proxy"]["default"], serde_json::to_value(ProxySpec::default()).unwrap());
    assert_eq!(spec["election"]["default"], serde_json::to_value(ElectionSpec::default()).unwrap());
}

#[test]
fn every_field_a_person_sets_has_a_description() {
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, sub) in props {
                let here = format!("{path}.{name}");
                if sub.get("description").is_none() && !here.contains(".metadata") && !here.contains("Selector.") {
                    missing.push(here.clone());
                }
                walk(&here, sub, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let crd = serde_json::to_value(HighAvailabilityCluster::crd()).unwrap();
    let mut missing = Vec::new();
    walk("", &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"], &mut missing);
    assert_eq!(missing, Vec::<String>::new(), "fields without kubectl explain text");
}

#[test]
fn the_agent_file_of_the_docs_parses_as_a_member_spec() {
    let file = include_str!("../../examples/agent/n1.yaml");
    let spec: HighAvailabilityMemberSpec = serde_norway::from_str(file).unwrap();
    assert_eq!(spec.priority, 150);
    assert_eq!(spec.health[0].interval, Interval::from_millis(200));
    assert_eq!(spec.health[0].weight, -60);
    assert!(spec.vrrp.accept, "accept mode defaults on");
}
