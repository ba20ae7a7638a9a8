#!/usr/bin/env bash
# tinyshakespeare end to end with the sbd command line (examples/tinyshakespeare.md):
# bytes (L = 256) -> a mix-scale tiny model and a block-1 judge -> draft | remask | revise
# -> Gen PPL of the draft and of the revision, as a markdown table.
#
#   bash examples/tinyshakespeare.sh TEXT [WORKDIR]
#
# TEXT: tinyshakespeare.txt (any UTF-8 text works). WORKDIR: default runs/shakespeare.
# Environment: STEPS (5000 optimizer steps per model), N (512 samples), DEVICE (auto).
# Finished steps are reused when the script is run again.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash examples/tinyshakespeare.sh TEXT [WORKDIR]" >&2
  exit 2
fi
TEXT=$1
W=${2:-runs/shakespeare}
STEPS=${STEPS:-5000}
N=${N:-512}
DEVICE=${DEVICE:-auto}
SBD=${SBD:-sbd}

mkdir -p "$W"
# 1. Bytes, rows of 256 that start with BOS, EOS after every blank-line-separated speech.
[ -f "$W/data/manifest.json" ] ||
  $SBD prepare --text "$TEXT" --tokenizer bytes --seq-len 256 --out "$W/data"

# 2. The model: mix-scale blocks {4, 256}, a whole-sequence block on 10% of the steps.
[ -f "$W/mix/model.safetensors" ] ||
  $SBD train --data "$W/data" --out "$W/mix" --preset tiny --mix 4,256 --lambda 0.1 \
    --steps "$STEPS" --seed 0 --device "$DEVICE"

# 3. The judge: block size 1 is an autoregressive model; --eps-min 1 masks every token.
[ -f "$W/judge/model.safetensors" ] ||
  $SBD train --data "$W/data" --out "$W/judge" --preset tiny --block 1 --eps-min 1 \
    --steps "$STEPS" --seed 0 --device "$DEVICE"

# 4. Draft with blocks of 4 (2 calls per block) and an exact KV cache; remask the 25% least
#    confident tokens by snapshot confidence; revise them in one bidirectional block,
#    2 tokens per call (32 calls for the 63 masked tokens).
$SBD draft -m "$W/mix" -n "$N" --block 4 --steps-per-block 2 --seed 0 --batch-size 64 \
  --device "$DEVICE" -o "$W/draft.jsonl"
$SBD remask -m "$W/mix" --gamma 0.25 --strategy snapshot -i "$W/draft.jsonl" |
  $SBD revise -m "$W/mix" --block full --steps-per-block 32 --seed 0 --batch-size 64 \
    --device "$DEVICE" -o "$W/revised.jsonl"

# 5. Gen PPL under the judge (EOS is context, never scored), entropy, calls, seconds.
$SBD eval genppl -e "$W/judge" -i "$W/draft.jsonl" -i "$W/revised.jsonl" \
  --device "$DEVICE" --markdown | tee "$W/genppl.md"
