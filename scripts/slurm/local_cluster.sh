#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests (make test-slurm): Debian's slurm-wlm and
# munge, a slurm.conf with this host's name and CPU count, requeueing allowed, a partition
# `urgent` whose jobs pre-empt the default partition's (PreemptMode=REQUEUE: SIGTERM, 60 s of
# grace, then requeued), then munged, slurmctld and slurmd started. Idempotent: run it again and it leaves a working cluster as it
# is. Needs root (apt-get, daemons). Usage: bash scripts/slurm/local_cluster.sh
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "error: the local SLURM cluster is set up as root (apt-get, munge and slurm daemons)" >&2
    exit 2
fi
if ! command -v slurmctld > /dev/null || ! command -v munged > /dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge > /dev/null 2>&1 \
        || { apt-get update -qq > /dev/null && apt-get install -y -q slurm-wlm munge > /dev/null; }
fi

host=$(hostname -s)
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > /etc/slurm/slurm.conf.new <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
MinJobAge=600
KillWait=10
SchedulerType=sched/backfill
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=$host MaxTime=INFINITE State=UP PriorityTier=2
CONF
changed=1
if cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; then changed=0; fi
mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf

if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
pgrep -x munged > /dev/null || runuser -u munge -- munged

if [ "$changed" = 1 ]; then
    pkill -x slurmctld || true
    pkill -x slurmd || true
    while pgrep -x slurmctld > /dev/null || pgrep -x slurmd > /dev/null; do sleep 0.2; done
fi
pgrep -x slurmctld > /dev/null || slurmctld
pgrep -x slurmd > /dev/null || slurmd

for _ in $(seq 1 150); do  # the node comes up within seconds
    if sinfo -h -N -o %T 2> /dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "SLURM: one node ($host, $cpus CPUs) up"
        exit 0
    fi
    sleep 0.2
done
echo "error: the SLURM node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
