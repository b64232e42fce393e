"""Draw target/bench/bench.json as a PNG a person can read at a glance:
request/response rate, connection rate and throughput per path, each as a
fraction of bare node-to-node (A-bare: two namespaces on a bridge with no
netfilter, the limit; A, the lab's own nodes with kube-proxy's rules and
sluice's table, is drawn as a bar), with the CNI and control-plane figures
below."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

report = json.load(open(sys.argv[1]))
paths = report["paths"]
base_name = "A-bare node-node" if "A-bare node-node" in paths else "A node-node"
names = [n for n in paths if n != base_name]
base = paths[base_name]
metrics = [("rr", "TCP_RR"), ("crr", "TCP_CRR"), ("gbit", "throughput")]

fig, axes = plt.subplots(1, 3, figsize=(14, 4.8), sharey=True)
colors = {"L": "#999999", "B": "#d08c3a", "K": "#8a5a9e", "S": "#2f6db5"}
for ax, (key, title) in zip(axes, metrics):
    # Service paths have no throughput figure (null): drawn as 0.
    values = [(paths[n][key] or 0) / base[key] if base[key] else 0 for n in names]
    bars = ax.barh(names, values, color=[colors.get(n[0], "#555") for n in names])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_title(f"{title} (x {base_name})")
    for b, v in zip(bars, values):
        ax.text(v + 0.01, b.get_y() + b.get_height() / 2, f"{v:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max(values + [1.0]) * 1.25)
cni = report["cni"]
cp = report["control_plane"]
fig.suptitle(
    f"sluice (S) vs bridge + host routes (B), the kernel's VXLAN overlay (K), veth pair (L), lab nodes (A); {base_name} = 1.0\n"
    f"CNI ADD+DEL p99: sluice {cni['sluice']['add_del_p99_ms']:.1f} ms, bridge+host-local "
    f"{cni['bridge_host_local']['add_del_p99_ms']:.1f} ms   |   {cp['peers']} routes reconciled in "
    f"{cp['reconcile_from_scratch_ms']:.1f} ms, agent RSS {cp['agent_rss_with_peers_mib']:.1f} MiB",
    fontsize=10,
)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
