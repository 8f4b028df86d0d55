#!/bin/sh
# vcluster_agent.sh - the "ssh" that mpirun uses inside a vcluster (--prtemca plm_ssh_agent <this file>).
#
# PRRTE (Open MPI 5's runtime) calls its ssh agent exactly like ssh:
#     <agent> <host> <word> <word> ...
# e.g. <agent> vc123x4-n1 'PRTE_PREFIX=...;export PRTE_PREFIX;...;/path/bin/prted' --prtemca ess '"env"' ...
# The words together are ONE shell command line, with shell quoting inside them (literal "..." quotes,
# `;`, `$LD_LIBRARY_PATH`): like ssh, we join them with spaces and let `sh -c` parse the result.
# Instead of logging in somewhere, we enter the node: its network namespace (ip netns exec, which also
# bind-mounts /etc/netns/<node>/hosts over /etc/hosts) and a fresh UTS namespace whose hostname is the
# node name, so the prted there sees the node's address, hostname and name resolution.
# PRRTE uses --tree-spawn: a prted may call this agent again from inside another node; that works too.
set -u
while [ $# -gt 0 ]; do            # ssh-style flags (PRRTE passes none to a custom agent; be lenient)
    case "$1" in
        -*) shift ;;
        *) break ;;
    esac
done
if [ $# -lt 2 ]; then
    echo "vcluster_agent.sh: usage: vcluster_agent.sh <node> <command words...>" >&2
    exit 255
fi
host=$1
shift
ns=$host
if [ ! -e "/run/netns/$ns" ]; then
    # an address or another alias: look it up in the hosts lists of the running vclusters
    ns=$(cat /run/vcluster/*/hosts 2>/dev/null | awk -v h="$host" '$1 == h || $2 == h { print $2; exit }')
    if [ -z "$ns" ] || [ ! -e "/run/netns/$ns" ]; then
        echo "vcluster_agent.sh: unknown vcluster node '$host' (no network namespace /run/netns/$host)" >&2
        exit 255
    fi
fi
case "$ns" in
    *-n[0-9]*) VCLUSTER_NODE_RANK=${ns##*-n}; VCLUSTER_NODE_NAME=$ns
               export VCLUSTER_NODE_RANK VCLUSTER_NODE_NAME ;;
esac
exec ip netns exec "$ns" unshare --uts -- sh -c 'printf "%s\n" "$0" > /proc/sys/kernel/hostname && exec sh -c "$1"' "$ns" "$*"
