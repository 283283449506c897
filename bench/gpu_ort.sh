#!/usr/bin/env bash
# ONNX Runtime's CUDA execution provider, bound for real, on the GPU machine (issue 19, runs 1 and 3).
#
# The GPU machine's image has ONNX Runtime's CPU build only and no network, so the GPU build
# (onnxruntime-gpu 1.31.1, built for CUDA 13, which the image's torch ships) travels in pieces
# that fit the device tool's 64 MiB per call, and is unpacked here against torch's CUDA 13 and
# cuDNN 9 libraries. Pieces, made on the workstation: `pip download --no-deps --only-binary=:all:
# --python-version 3.12 --platform manylinux_2_28_x86_64 onnxruntime-gpu==1.31.1` (and the deps
# below), the CUDA provider library taken out of the wheel and `xz -6`, split in <= 55 MiB parts,
# each carried in one call and copied to $ORTW:
#   $ORTW/deps/*.whl          pydantic, pydantic-core, annotated-types, typing-inspection,
#                             typing-extensions, sniffio, diffusers, importlib-metadata, zipp,
#                             and for the sd-server: starlette, uvicorn (the image has neither)
#   $ORTW/ort_rest.zip        the onnxruntime-gpu wheel without its CUDA provider library
#   $ORTW/cuda.so.xz.N        libonnxruntime_providers_cuda.so, xz-compressed, split in order
#
#   bench/gpu_ort.sh probe    snapshot + admit with the GPU build, admit with the CPU build
#   bench/gpu_ort.sh paths    bench/sd_paths.py: torch fp16 vs ORT CUDA EP (default arena vs
#                             kSameAsRequested + gpu_mem_limit), direct rows
#   bench/gpu_ort.sh server   the same two ORT arenas behind the server, 16 and 32 concurrent
set -uo pipefail
OUT=${OUT:-/tmp/gpu-ort-out}
ORTW=${ORTW:-/root/ortw}
site=/tmp/site-ortgpu
cpu_site=/tmp/site-ortcpu
mkdir -p "$OUT"

if [ ! -f "$site/onnxruntime/capi/libonnxruntime_providers_cuda.so" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$ORTW"/deps/*.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$cpu_site" "$ORTW"/deps/*.whl
  python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
    "$ORTW/ort_rest.zip" "$site"
  cat $(ls "$ORTW"/cuda.so.xz.* | sort -t. -k4 -n) | python3 -c "
import lzma, shutil, sys
shutil.copyfileobj(lzma.open(sys.stdin.buffer), open(sys.argv[1], 'wb'))" \
    "$site/onnxruntime/capi/libonnxruntime_providers_cuda.so" || exit 3
fi
nv=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH="$nv/cu13/lib:$nv/cudnn/lib:${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1
repo=$PWD
gpu_path="$site:$repo:$repo/deploy/sd-server/src"
cpu_path="$cpu_site:$repo:$repo/deploy/sd-server/src"

case ${1:?probe|paths|server} in
  probe)
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
      | tee "$OUT/env.txt"
    PYTHONPATH=$gpu_path python3 -c "import onnxruntime as o, torch
print('onnxruntime', o.__version__, o.get_device(), o.get_available_providers())
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" \
      | tee -a "$OUT/env.txt"
    PYTHONPATH=$gpu_path python3 -m rollout.cli snapshot --local --output json \
      >"$OUT/snapshot_ortgpu.json"; echo "snapshot (GPU build) exit $?"
    for req in CUDAExecutionProvider TensorrtExecutionProvider; do
      PYTHONPATH=$gpu_path python3 -m rollout.cli admit --local --require-provider "$req" \
        --output json >"$OUT/admit_ortgpu_$req.json"
      echo "admit (GPU build) --require-provider $req exit $?"
    done
    PYTHONPATH=$cpu_path python3 -m rollout.cli admit --local \
      --require-provider CUDAExecutionProvider --output json >"$OUT/admit_ortcpu.json"
    echo "admit (CPU build) --require-provider CUDAExecutionProvider exit $?"
    ;;
  paths)
    PYTHONPATH=$gpu_path python3 bench/sd_paths.py --paths fast,ort,ort-same --no-server \
      --workloads 512x25x1,512x25x8,1024x50x1 --reps 3 --time-budget-s "${BUDGET:-420}" \
      --onnx-cache /tmp/sd-onnx --out "$OUT"
    ;;
  server)
    for p in ort ort-same; do
      PYTHONPATH=$gpu_path python3 bench/sd_paths.py --paths "$p" --server-path "$p" \
        --workloads 512x25x1 --reps 3 --concurrency 16 --concurrencies 16,32 \
        --time-budget-s "${BUDGET:-240}" --onnx-cache /tmp/sd-onnx --out "$OUT"
    done
    ;;
esac
