#!/usr/bin/env bash
# Install the Synapse the benchmarks compare against into bench/.venv-synapse (idempotent).
#   bash bench/setup_synapse.sh          # prints the interpreter path when done
# Env: SYNAPSE_VERSION (default 1.163.2), SYNAPSE_VENV (default bench/.venv-synapse),
#      PYTHON (interpreter to create the venv with; default python3.11, else python3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="${SYNAPSE_VERSION:-1.163.2}"
venv="${SYNAPSE_VENV:-$here/.venv-synapse}"
marker="$venv/.installed-$version"
if [ ! -f "$marker" ]; then
    py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "matrix-synapse==$version" psycopg2-binary >&2
    "$venv/bin/python" -c "import synapse, psycopg2; assert synapse.__version__.split()[0] == '$version', synapse.__version__"
    touch "$marker"
fi
echo "$venv/bin/python"
