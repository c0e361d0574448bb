#!/usr/bin/env bash
# Boots one host of the test world as a node: its containerd and its kubelet, in the host's network and UTS
# namespaces (entered by the caller, e2e/src/node.rs) and in a mount namespace of their own, made here, that
# both share for good (the kubelet's volume mounts must be visible to containerd and its shims).
#   unshare --mount --propagation private node.sh [--kubeadm] <host> <address> <node dir> <log dir> <kubelet> <runtime dir> <images…>
# Exits when either daemon exits (a "crashed node"); the caller stops the rest through the node's cgroups.
#
# Without --kubeadm the kubelet runs at once with the test world's own configuration and credentials. With
# --kubeadm the node is an empty machine with the kubelet package installed: the kubelet runs as the
# packages' kubelet.service with kubeadm's drop-in would run it, from the files kubeadm writes, started and
# restarted by `systemctl` (e2e/noderuntime/bin/systemctl writes the requests to /run/kubelet-unit; this
# script is the systemd that carries them out), and crash-looping until kubeadm has configured it.
#
# With --bare the host is a machine without a kubelet (an external etcd host): the same private /run,
# overlays and binds, and nothing started; the script then waits, holding the mount namespace, for the
# services a person starts there (e2e/cluster node-shell, Cluster::start_node_service).
set -euo pipefail
kubeadm=false bare=false
case "${1:-}" in
  --kubeadm) kubeadm=true; shift ;;
  --bare) bare=true; shift ;;
esac
host=$1 address=$2 dir=$3 logs=$4 kubelet=$5 runtime=$6
shift 6
cgroot=kubeha-e2e/$host

# Everything this node starts lives under /kubeha-e2e/<host>: the daemons (and the shims they start) in
# runtime/, the pods in pods/ (the kubelet's cgroupRoot). Stopping the node is killing that tree.
for c in cpu cpuacct cpuset memory devices freezer blkio pids systemd; do
  echo $$ >"/sys/fs/cgroup/$c/$cgroot/runtime/cgroup.procs"
done

# A sysfs of this network namespace (the kubelet reads its interfaces), and the cgroup hierarchies again on
# top of it: `ip netns exec` would remount /sys and leave the kubelet without cgroup mounts.
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
  mkdir "/sys/fs/cgroup/$c"
  mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"
done
mkdir /sys/fs/cgroup/systemd /sys/fs/cgroup/unified
mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified

# Paths containerd and the kubelet hard-code would collide between nodes: a /run of the node's own (shim
# sockets, containerd state, pod network namespaces), /etc and /var/lib as overlays with a per-node upper
# layer (kubelet's device-plugin socket, the CNI cache, hostPath volumes), and the node's own /var/log.
mount -t tmpfs -o mode=755 run /run
for d in etc var/lib; do
  mkdir -p "$dir/overlay/$d/upper" "$dir/overlay/$d/work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$dir/overlay/$d/upper,workdir=$dir/overlay/$d/work" "/$d"
done
# Directories the tests read and write from outside (static pods, the agent's state, logs): bind mounts,
# so that what a test writes into the node directory is what the node sees at once.
for pair in etc/kubernetes:etc-kubernetes etc/kubeha:etc-kubeha var/lib/kubeha:var-lib-kubeha var/log:var-log; do
  mkdir -p "/${pair%%:*}" "$dir/${pair##*:}"
  mount --bind "$dir/${pair##*:}" "/${pair%%:*}"
done
mkdir -p /etc/kubernetes/manifests /var/log/pods
# The machine's own name resolves, as on any installed host (kubeadm's preflight looks it up).
echo "${address%%,*} $host" >>/etc/hosts
if $bare; then
  : >"$dir/booted"
  exec sleep infinity
fi

export PATH=$runtime:$PATH # containerd finds containerd-shim-runc-v2 on PATH
"$runtime/containerd" --config "$dir/containerd.toml" >>"$logs/containerd.log" 2>&1 &
containerd=$!
for _ in $(seq 100); do
  "$runtime/ctr" -a /run/containerd/containerd.sock version >/dev/null 2>&1 && break
  kill -0 $containerd 2>/dev/null || { echo "node.sh: containerd on $host exited: see $logs/containerd.log" >&2; exit 1; }
  sleep 0.1
done
# The images this node may run, from archives: no registry anywhere. Importing again after a reboot is
# a no-op for content already there.
for image in "$@"; do
  "$runtime/ctr" -a /run/containerd/containerd.sock -n k8s.io images import "$image" >/dev/null
done

if ! $kubeadm; then
  "$kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" --root-dir /var/lib/kubelet \
    --cert-dir "$dir/kubelet-pki" --hostname-override "$host" --node-ip "$address" \
    >>"$logs/kubelet.log" 2>&1 &
  kubelet_pid=$!
  wait -n $containerd $kubelet_pid || true
  echo "node.sh: a daemon of $host exited" >&2
  exit 1
fi

# kubelet.service as the kubelet package and kubeadm's 10-kubeadm.conf define it: kubeadm's files, then
# KUBELET_KUBEADM_ARGS from kubeadm-flags.env, then KUBELET_EXTRA_ARGS (the machine's part: this node's
# address, and a drop-in directory with what this machine needs of every kubelet, cgroup v1 and a shared
# disk). The unit is enabled, so it starts at boot and crash-loops (Restart=always, RestartSec=10) until
# kubeadm has written its configuration and restarted it.
unit=/run/kubelet-unit
mkdir -p $unit
echo started >$unit/want
extra=(--node-ip "$address" --config-dir "$dir/kubelet.conf.d")
kubelet_pid=
seen=0
run_kubelet() {
  local flags=
  [ -f /var/lib/kubelet/kubeadm-flags.env ] && flags=$(sed -n 's/^KUBELET_KUBEADM_ARGS="\(.*\)"$/\1/p' /var/lib/kubelet/kubeadm-flags.env)
  # shellcheck disable=SC2086 # the env file's value is a word list, as systemd splits it
  "$kubelet" --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf \
    --config=/var/lib/kubelet/config.yaml $flags "${extra[@]}" >>"$logs/kubelet.log" 2>&1 &
  kubelet_pid=$!
  echo "$kubelet_pid" >$unit/pid
}
stop_kubelet() {
  [ -n "$kubelet_pid" ] || return 0
  kill "$kubelet_pid" 2>/dev/null || true
  wait "$kubelet_pid" 2>/dev/null || true
  kubelet_pid=
  rm -f $unit/pid
}
: >"$dir/booted"
while kill -0 $containerd 2>/dev/null; do
  want=$(cat $unit/want 2>/dev/null || echo stopped)
  restarts=$(cat $unit/restarts 2>/dev/null || echo 0)
  if [ "$want" != started ]; then
    stop_kubelet
  elif [ "$restarts" != "$seen" ]; then
    seen=$restarts
    stop_kubelet
    run_kubelet
  elif [ -z "$kubelet_pid" ] || ! kill -0 "$kubelet_pid" 2>/dev/null; then
    if [ -n "$kubelet_pid" ]; then
      wait "$kubelet_pid" 2>/dev/null || true
      kubelet_pid=
      rm -f $unit/pid
      # RestartSec=10, unless systemctl asks for a (re)start meanwhile.
      for _ in $(seq 50); do
        [ "$(cat $unit/restarts 2>/dev/null || echo 0)" = "$seen" ] || break
        sleep 0.2
      done
      continue
    fi
    run_kubelet
  fi
  sleep 0.2
done
echo "node.sh: containerd of $host exited" >&2
