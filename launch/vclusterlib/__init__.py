# SPDX-License-Identifier: MIT
"""The parts of launch/vcluster, the virtual-cluster launcher (standard library only; run as root).

``launch/vcluster`` puts launch/ on sys.path and calls :func:`vclusterlib.cli.main`.  Each module
holds one concern and imports only the ones listed before it:

    common          program name and paths, VClusterError, progress lines (log, --quiet)
    units           --rate / --delay parsing, rate formatting
    processes       ip/tc helper commands (timeout, failure hints), namespaces' processes, killing
    state           /run/vcluster state files, locking, subnet choice, teardown, --list / --cleanup*
    tcp_congestion  --tcp-congestion: the nodes' TCP congestion control
    shaping         tc htb + netem/bfifo on a link, netem probe, the delay mode
    delayline       the user-space delay line (Python; launch/delayline.c built and started)
    cluster         the Cluster: namespaces, veths, bridge, hosts files, shaping, teardown
    launchers       the command's processes: none / torchrun / mpirun, output tags, exit status
    cli             options, --help, preflight checks, signals, main
"""
