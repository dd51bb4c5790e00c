#!/usr/bin/env bash
# Install a single-node SLURM (Debian slurm-wlm + munge) for the tests that submit real jobs.
#
# Run as root on a Debian/Ubuntu machine (CI does: `.ci/run` calls this). Idempotent: does nothing
# when slurmctld is already installed. It only installs packages and makes sure a munge key exists;
# the test fixture (tests/fixtures/slurm.py) writes slurm.conf into a temp folder and starts the
# daemons itself, so no system service is configured or started here.
set -euo pipefail

if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
    echo "slurm_setup: slurmctld and munged already installed, nothing to do" >&2
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm_setup: must run as root (apt-get install slurm-wlm munge)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends slurm-wlm munge

# The munge package creates a key at install time; make one if that step was skipped (containers).
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile /etc/munge/munge.key
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
echo "slurm_setup: installed $(slurmctld -V 2>/dev/null || echo slurm)" >&2
