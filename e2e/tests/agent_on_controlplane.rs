//! The agent's HTTPS health check against the real kube-apiservers of the three-master control plane: a
//! master whose own API server stops gives the VIP to a master whose API server serves.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::Up;
use kubeha_e2e::{Host, NODES};

const VIP: &str = "198.51.100.10";

fn agent(up: &Up, node: Host, priority: u8) -> kubeha_e2e::Process {
    let file = up.cluster.dir().join(format!("agent-{node}.yaml"));
    let yaml = format!(
        "nodeName: {node}\ninterface: eth0\nvip: {VIP}/24\nvrid: 51\npriority: {priority}\n\
         vrrp: {{version: 3, advertInterval: 100ms}}\nmetrics: {{listen: \"127.0.0.1:9641\"}}\n\
         health:\n  - {{name: apiserver, https: {{url: \"https://{ip}:6443/readyz\", insecureSkipVerify: true}},\n     \
         interval: 200ms, timeout: 1s, rise: 2, fall: 3, weight: -60}}\n",
        ip = node.ipv4()
    );
    std::fs::write(&file, yaml).unwrap();
    let bin = kubeha_e2e::kubeha_binary("kubeha-agent").unwrap().display().to_string();
    let argv = [bin.as_str(), "--log-format", "text", "run", "--config", file.to_str().unwrap()];
    up.cluster.spawn(&node, "kubeha-agent", &argv.map(String::from)).unwrap()
}

fn until_holders(up: &Up, want: &[Host], within: Duration) -> Duration {
    let start = Instant::now();
    let vip: IpAddr = VIP.parse().unwrap();
    while start.elapsed() < within {
        if up.cluster.holders(vip) == want {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("VIP holders {:?}, wanted {want:?} within {within:?}", up.cluster.holders(vip));
}

#[tokio::test]
async fn a_master_whose_api_server_stops_hands_the_vip_to_one_that_serves() {
    kubeha_e2e::skip_unless_root!();
    let up = Up::new().await;
    let [n1, n2, n3] = NODES;
    let _agents = [agent(&up, n1, 200), agent(&up, n2, 190), agent(&up, n3, 180)];
    until_holders(&up, &[n1], Duration::from_secs(10));

    up.cluster.stop_apiserver(&n1).unwrap();
    // /readyz fails 3 times (fall) → 200 − 60 = 140 < 190: n2 preempts.
    let moved = until_holders(&up, &[n2], Duration::from_secs(10));
    eprintln!("VIP on n2 {moved:?} after n1's kube-apiserver stopped");
    up.cluster.start_apiserver(&n1).await.unwrap();
    until_holders(&up, &[n1], Duration::from_secs(15));
}
