#!/usr/bin/env bash
# The CUDA path in one prepared run: the reference config (benchmarks/speed.py's REFERENCE) trained
# for STEPS steps on CPU, then on 1 GPU (GPU TBE kernels, TrainPipelineSparseDist overlapping the
# next batch's input dist with this one's compute) and, with several GPUs, on all of them under
# torchrun (NCCL). Prints samples/s of each and checks that 1 GPU reaches the CPU run's test
# metrics (AUC within 0.01, RMSE within 0.02: the kernels differ, so the runs are not bitwise equal).
#
#   bash benchmarks/gpu_check.sh                 # STEPS=300, PY=.venv/bin/python
#   STEPS=100 PY=python bash benchmarks/gpu_check.sh
#
# Needs torch, fbgemm-gpu and torchrec built for CUDA on the GPU machine (packaging/Dockerfile
# --build-arg VARIANT=cuda); without a GPU it runs the CPU part and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-300}
OUT=${OUT:-$(mktemp -d -t gpu_check_XXXX)}
REF=(model.embedding_dim=16 model.backbone=mmoe model.mmoe.num_experts=8 "model.mmoe.expert_layers=[256,128]"
     "model.mmoe.gate_layers=[64]" "model.tower_layers=[64]" "model.dense_layers=[64,16]" data.batch_size=1024
     train.sparse_optimizer=adagrad train.sparse_lr=0.1 train.progress=false train.epochs=1
     "train.max_steps=$STEPS" data.synthetic.num_impressions=500000)

run() {  # name, launcher..., then train args
  local name=$1; shift
  echo "== $name" >&2
  "$@" -m mtl_torchrec train --config default run_dir="$OUT/$name" "${REF[@]}" > "$OUT/$name.log" 2>&1 \
    || { tail -30 "$OUT/$name.log"; exit 1; }
}

CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=${CPU_THREADS:-$(nproc)} run cpu "$PY"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -ge 1 ]; then
  nvidia-smi -L || true
  CUDA_VISIBLE_DEVICES=0 run gpu1 "$PY"
  if [ "$GPUS" -ge 2 ]; then
    run "gpu$GPUS" "$PY" -m torch.distributed.run --standalone --nproc_per_node="$GPUS"
  fi
else
  echo "no CUDA device: ran the CPU part only" >&2
fi

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {p.name: p for p in sorted(out.iterdir()) if p.is_dir()}
print(f"{'run':<8}{'ranks':>6}{'samples/s':>12}{'click AUC':>11}{'conv AUC':>10}{'rating RMSE':>13}")
metrics = {}
for name, path in runs.items():
    s = json.loads((path / "train_summary.json").read_text())
    m = json.loads((path / "metrics.json").read_text())
    metrics[name] = m
    print(f"{name:<8}{s['world_size']:>6}{s['samples_per_s']:>12,.0f}{m['click']['auc']:>11.4f}"
          f"{m['conversion']['auc']:>10.4f}{m['rating']['rmse']:>13.4f}")
if "gpu1" in metrics:
    c, g = metrics["cpu"], metrics["gpu1"]
    gaps = {"click AUC": abs(c["click"]["auc"] - g["click"]["auc"]),
            "conversion AUC": abs(c["conversion"]["auc"] - g["conversion"]["auc"]),
            "rating RMSE": abs(c["rating"]["rmse"] - g["rating"]["rmse"])}
    ok = gaps["click AUC"] < 0.01 and gaps["conversion AUC"] < 0.01 and gaps["rating RMSE"] < 0.02
    print("1 GPU vs CPU:", ", ".join(f"{k} {v:.4f}" for k, v in gaps.items()), "->", "PARITY OK" if ok else "PARITY FAILED")
    sys.exit(0 if ok else 1)
EOF
