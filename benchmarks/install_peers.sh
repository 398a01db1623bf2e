#!/usr/bin/env bash
# Install the peer libraries the benchmarks compare against (torchattacks, foolbox, cleverhans,
# IBM ART) into the project's .venv.
#
# Every peer is installed with --no-deps so that pip never replaces the installed torch (CPU
# build) or pulls in torchvision / tensorflow / jax; only the small pure-Python packages that
# each peer needs at import time are added, and only when they are missing.
#
# usage: bash benchmarks/install_peers.sh   (from the repository root)
set -euo pipefail

cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [[ ! -x "$PY" ]]; then
    echo "install_peers.sh: $PY not found; create the virtualenv first (see README)" >&2
    exit 1
fi

torch_before=$("$PY" -c 'import torch; print(torch.__version__)')

have() { "$PY" -c "import $1" >/dev/null 2>&1; }

# pip install --no-deps <dist> unless <module> already imports
need() {
    local module=$1 dist=$2
    if have "$module"; then
        echo "ok       $dist"
    else
        echo "install  $dist"
        "$PY" -m pip install --quiet --no-deps "$dist"
    fi
}

# light dependencies used at import time by the peers
need requests requests
need urllib3 urllib3
need idna idna
need certifi certifi
need charset_normalizer charset-normalizer
need typing_extensions typing-extensions
need git GitPython
need gitdb gitdb
need smmap smmap
need packaging packaging
need tqdm tqdm
need scipy scipy
need sklearn scikit-learn
need six six

# the peers themselves
need torchattacks torchattacks
need eagerpy eagerpy
need foolbox foolbox
need cleverhans cleverhans
need art adversarial-robustness-toolbox

# cleverhans' torch attacks (cleverhans.torch.*) import only torch and numpy; absl-py, easydict,
# pycodestyle and nose (in cleverhans' metadata) are for its TF/JAX parts and tests: not installed.

torch_after=$("$PY" -c 'import torch; print(torch.__version__)')
if [[ "$torch_before" != "$torch_after" ]]; then
    echo "install_peers.sh: torch changed from $torch_before to $torch_after; restore it" >&2
    exit 1
fi

# the imports the benchmarks use
"$PY" - <<'EOF'
import importlib
for m in ["torchattacks", "foolbox", "eagerpy", "cleverhans.torch.attacks.projected_gradient_descent",
          "art.attacks.evasion", "art.estimators.classification"]:
    try:
        importlib.import_module(m)
        print(f"import   {m}: ok")
    except Exception as e:  # report and carry on: the benchmarks skip what is missing
        print(f"import   {m}: FAILED ({type(e).__name__}: {e})")
EOF
echo "torch    $torch_after (unchanged)"
