#!/usr/bin/env bash
# Podman for the container tests on a machine without Docker (CI, developers' machines):
# installs podman, runc and mmdebstrap from Debian, writes a containers.conf that works in a
# sandbox (no rlimits to set, runc for hybrid cgroups), and builds a stand-in for the base image
# from Debian's packages (no image registry is reachable). Idempotent; prints the conf's path.
#   CONTAINERS_CONF=$(bash docker/podman-setup.sh) podman build --from localhost/whispr-python-standin ...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
conf="$here/.podman/containers.conf"
standin="${WHISPR_STANDIN_IMAGE:-localhost/whispr-python-standin:bookworm}"

if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v runc >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq podman runc mmdebstrap uidmap >&2
fi
mkdir -p "$(dirname "$conf")"
printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' > "$conf"
export CONTAINERS_CONF="$conf"

if ! podman image exists "$standin"; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    # What python:3.11-slim gives the Dockerfile: python3 as `python`, pip allowed to install.
    mmdebstrap --quiet --variant=apt --include=python3,python3-venv,python3-pip,ca-certificates \
        --customize-hook='chroot "$1" ln -sf /usr/bin/python3 /usr/local/bin/python' \
        --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
        bookworm "$tmp/base.tar" >&2
    podman import --quiet --change 'CMD ["python"]' "$tmp/base.tar" "$standin" >&2
fi
echo "$conf"
