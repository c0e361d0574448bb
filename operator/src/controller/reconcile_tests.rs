//! The reconcile against a mock API server that sees every request the operator sends and answers it: the
//! exact writes of each situation — the finalizer added, members and status applied server-side, Events, the
//! finalizer removed — and none at all when nothing but time has passed. (The pattern of kube-rs's
//! controller-rs fixtures, with a channel in place of tower-test.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kubeha_crds::{HighAvailabilityCluster, HighAvailabilityMember};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{CLEANUP_FINALIZER, Context, Metrics, reconcile};
use crate::desired::tests::{hac, node};
use crate::seen::Sightings;

/// One request the operator sent.
#[derive(Debug)]
struct Sent {
    method: String,
    /// Path and query.
    uri: String,
    content_type: String,
    body: Value,
    answer: oneshot::Sender<Response<Body>>,
}

impl Sent {
    /// Answers 200 with `body`.
    fn ok(self, body: &Value) {
        let _ =
            self.answer.send(Response::builder().status(200).body(Body::from(body.to_string().into_bytes())).unwrap());
    }

    /// Answers 200 with the request's own body, as the API server echoes an applied object.
    fn echo(self) {
        let body = self.body.clone();
        self.ok(&body);
    }
}

/// The API server's side.
struct MockApi {
    rx: mpsc::UnboundedReceiver<Sent>,
}

impl MockApi {
    /// A client whose every request comes out of the returned mock.
    fn new() -> (Client, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        let service = tower::service_fn(move |req: Request<Body>| {
            let tx = tx.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let (answer, answered) = oneshot::channel();
                let content_type =
                    parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let _ = tx.send(Sent {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    content_type,
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    answer,
                });
                answered.await.map_err(|_| "the test did not answer")
            }
        });
        (Client::new(service, "default"), Self { rx })
    }

    /// The next request; fails the test when none comes within 5 s.
    async fn next(&mut self, what: &str) -> Sent {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no request for {what}"))
            .expect("the client is gone")
    }

    /// Fails the test if the operator sends anything more.
    fn nothing_more(&mut self) {
        if let Ok(s) = self.rx.try_recv() {
            panic!("an unexpected {} {}: {}", s.method, s.uri, s.body);
        }
    }
}

fn store<K>(objects: Vec<K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

fn three_masters() -> Vec<Node> {
    (1..=3).map(|i| node(&format!("n{i}"), &[&format!("198.51.100.1{i}")], true)).collect()
}

fn context(client: Client, cluster: &HighAvailabilityCluster, members: Vec<HighAvailabilityMember>) -> Arc<Context> {
    let reporter = Reporter { controller: super::MANAGER.into(), instance: Some("test".into()) };
    Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        nodes: store(three_masters()),
        members: store(members),
        clusters: store(vec![cluster.clone()]),
        metrics: Metrics::register(&mut Registry::default()),
        release_timeout: Duration::from_secs(30),
        system_leases: store(Vec::new()),
        heartbeats: store(Vec::new()),
        seen: Arc::new(Mutex::new(Sightings::default())),
        may_act: Box::new(|| true),
    })
}

/// The cluster `api` with the cleanup finalizer, as the API server returns it after the first reconcile.
fn finalized() -> HighAvailabilityCluster {
    let mut h = hac(json!({}));
    h.metadata.finalizers = Some(vec![CLEANUP_FINALIZER.into()]);
    h.metadata.resource_version = Some("1".into());
    h.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_800_000_000).unwrap()));
    h
}

fn as_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

#[tokio::test]
async fn a_new_cluster_first_gets_the_cleanup_finalizer_and_nothing_else() {
    let (client, mut api) = MockApi::new();
    let h = hac(json!({}));
    let ctx = context(client, &h, Vec::new());
    let run = tokio::spawn(reconcile(Arc::new(h), ctx));

    let s = api.next("the finalizer").await;
    assert_eq!(
        (s.method.as_str(), s.uri.as_str()),
        ("PATCH", "/apis/kubeha.io/v1alpha1/highavailabilityclusters/api?")
    );
    assert_eq!(s.content_type, "application/json-patch+json");
    assert!(s.body.to_string().contains(CLEANUP_FINALIZER), "{}", s.body);
    s.ok(&as_json(&finalized()));
    run.await.unwrap().unwrap();
    api.nothing_more();
}

/// Runs the reconcile of a finalized cluster `h` with `members` cached, answering member applies and Events
/// by echo and the status apply with the cluster; returns every request as (method, path, body).
async fn reconciled(h: HighAvailabilityCluster, members: Vec<HighAvailabilityMember>) -> Vec<(String, String, Value)> {
    let (client, mut api) = MockApi::new();
    let ctx = context(client, &h, members);
    let run = tokio::spawn(reconcile(Arc::new(h.clone()), ctx));
    let mut seen = Vec::new();
    // Until the reconcile ends and drops its client.
    while let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(5), api.rx.recv()).await {
        let path = s.uri.split('?').next().unwrap_or_default().to_string();
        seen.push((s.method.clone(), path.clone(), s.body.clone()));
        // As the API server answers: the object written (a status write: the cluster with it), or a Status.
        if s.method == "DELETE" {
            s.ok(&json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}}));
        } else if path.ends_with("/status") {
            let mut answered = as_json(&h);
            answered["status"] = s.body["status"].clone();
            s.ok(&answered);
        } else if path.ends_with("/highavailabilityclusters/api") {
            let mut answered = as_json(&h);
            answered["metadata"]["finalizers"] = json!([]);
            s.ok(&answered);
        } else {
            s.echo();
        }
    }
    run.await.unwrap().unwrap();
    api.nothing_more();
    seen
}

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const STATUS: &str = "/apis/kubeha.io/v1alpha1/highavailabilityclusters/api/status";

fn member_path(n: &str) -> String {
    format!("/apis/kubeha.io/v1alpha1/highavailabilitymembers/api-{n}")
}

fn summary(sent: &[(String, String, Value)]) -> Vec<(&str, &str)> {
    sent.iter().map(|(m, p, _)| (m.as_str(), p.as_str())).collect()
}

/// What the first reconcile of a finalized cluster leaves: its members as applied, its status as written.
async fn after_first_reconcile() -> (Vec<(String, String, Value)>, Vec<HighAvailabilityMember>, HighAvailabilityCluster)
{
    let sent = reconciled(finalized(), Vec::new()).await;
    let members = sent[..3].iter().map(|(_, _, b)| serde_json::from_value(b.clone()).unwrap()).collect();
    let mut h = finalized();
    h.status = Some(serde_json::from_value(sent[3].2["status"].clone()).unwrap());
    (sent, members, h)
}

#[tokio::test]
async fn a_finalized_cluster_gets_one_member_per_master_by_apply_then_its_status() {
    let (sent, _, _) = after_first_reconcile().await;
    let (m1, m2, m3) = (member_path("n1"), member_path("n2"), member_path("n3"));
    assert_eq!(
        summary(&sent),
        [("PATCH", m1.as_str()), ("PATCH", m2.as_str()), ("PATCH", m3.as_str()), ("PATCH", STATUS)]
    );
    // Server-side apply of whole members, owned by the cluster, labelled for the agents.
    let first = &sent[0].2;
    assert_eq!(first["spec"]["nodeName"], "n1");
    assert_eq!(first["metadata"]["labels"][kubeha_crds::contract::CLUSTER_LABEL], "api");
    assert_eq!(first["metadata"]["ownerReferences"][0]["kind"], "HighAvailabilityCluster");
    // The cache does not show the members yet: three masters awaited, not none.
    let status = &sent[3].2["status"];
    assert_eq!(status["membersReady"], "0/3");
    let quorum = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "QuorumAtRisk").unwrap();
    assert_eq!(quorum["reason"], "AwaitingAgents");
}

#[tokio::test]
async fn members_seen_in_the_cache_are_listed_and_announced_once_and_then_nothing_is_written() {
    let (_, members, h) = after_first_reconcile().await;
    let sent = reconciled(h.clone(), members.clone()).await;
    assert_eq!(summary(&sent), [("PATCH", STATUS), ("POST", EVENTS), ("POST", EVENTS), ("POST", EVENTS)]);
    assert_eq!(sent[0].2["status"]["members"].as_array().map(Vec::len), Some(3));
    let reasons: Vec<&Value> = sent[1..].iter().map(|(_, _, b)| &b["reason"]).collect();
    assert_eq!(reasons, [&json!("MemberJoined"); 3]);
    assert_eq!(sent[1].2["related"]["name"], "api-n1", "each Event names its member");

    // That status written, another reconcile later — its conditions' times from another moment — writes
    // nothing: no member, no status, no Event.
    let mut settled = h;
    settled.status = Some(serde_json::from_value(sent[0].2["status"].clone()).unwrap());
    for c in &mut settled.status.as_mut().unwrap().conditions {
        c.last_transition_time = Time(Timestamp::from_second(1_700_000_000).unwrap());
    }
    assert_eq!(reconciled(settled, members).await, [], "a reconcile that changes nothing writes nothing");
}

#[tokio::test]
async fn a_deleted_cluster_without_members_says_so_and_lets_its_finalizer_go() {
    let mut h = finalized();
    h.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1_800_000_100).unwrap()));
    let sent = reconciled(h, Vec::new()).await;
    assert_eq!(summary(&sent), [("POST", EVENTS), ("PATCH", "/apis/kubeha.io/v1alpha1/highavailabilityclusters/api")]);
    assert_eq!(sent[0].2["reason"], "Released");
    // A JSON patch that removes the finalizer only while it is still the one at that index.
    assert_eq!(
        sent[1].2,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": CLEANUP_FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
}

#[tokio::test]
async fn a_member_of_a_node_that_is_no_longer_a_master_is_deleted_and_the_others_left_alone() {
    let (_, mut members, h) = after_first_reconcile().await;
    let mut stray = members[2].clone();
    stray.metadata.name = Some("api-n9".into());
    stray.spec.node_name = "n9".into();
    members.push(stray);
    let sent = reconciled(h, members).await;
    let n9 = member_path("n9");
    assert_eq!(summary(&sent)[0], ("DELETE", n9.as_str()), "{sent:?}");
    assert!(sent.iter().all(|(m, p, _)| m != "PATCH" || !p.contains("highavailabilitymembers")), "no member rewritten");
}

#[tokio::test]
async fn a_vip_that_is_a_nodes_own_address_gets_no_member_and_a_condition_that_names_the_node() {
    let mut h = finalized();
    h.spec.vip = "198.51.100.12/24".into();
    let sent = reconciled(h, Vec::new()).await;
    let reasons: Vec<&Value> = sent[1..].iter().map(|s| &s.2["reason"]).collect();
    assert_eq!(summary(&sent), [("PATCH", STATUS), ("POST", EVENTS)], "no member is applied: {reasons:?}");
    let conditions = sent[0].2["status"]["conditions"].as_array().unwrap().clone();
    let find = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap().clone();
    assert_eq!(
        (find("VIPAccepted")["status"].as_str(), find("VIPAccepted")["reason"].as_str()),
        (Some("False"), Some("VIPIsNodeAddress"))
    );
    assert_eq!(find("Ready")["reason"], "VIPIsNodeAddress");
    assert_eq!(find("VIPAvailable")["reason"], "NoMembers", "not awaiting agents that are not coming");
    let message = find("Ready")["message"].as_str().unwrap().to_string();
    assert!(message.contains("198.51.100.12 is node n2's own address"), "{message}");
    assert_eq!(sent[1].2["reason"], "VIPIsNodeAddress");
    assert_eq!(sent[1].2["type"], "Warning");
}
