#!/bin/bash
# Wall time and peak memory (/usr/bin/time -v) of train, score and evaluate on a simulated
# fleet, printed one line per command. docs/benchmarks.md, "A month of a 20-host fleet":
#
#   minerwatch simulate --hosts 20 --train-days 30 --test-days 1 --interval 10s --output /tmp/big
#   bash benchmarks/batch_memory.sh /tmp/big
#
# MINERWATCH picks the program (default: minerwatch on PATH); to compare two versions, install
# each apart and run e.g. MINERWATCH="python -m minerwatch" PYTHONPATH=/tmp/old/pkg ... .
#
# ONEFILE=1 first joins each split's hosts into one file of samples and one process table
# (fleet.csv, fleet.procs.csv: a fleet exported whole), and measures train and score on those
# ("A fleet in one file", docs/benchmarks.md); evaluate reads its test split whole anyway.
set -euo pipefail
data=${1:?usage: batch_memory.sh DATA (a folder minerwatch simulate wrote)}
read -r -a mw <<< "${MINERWATCH:-minerwatch}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ "${ONEFILE:-0}" = 1 ]; then
    for split in train test; do
        mkdir -p "$work/one/$split"
        for kind in csv procs.csv; do
            out="$work/one/$split/fleet.$kind"
            files=()
            for f in "$data/$split"/*."$kind"; do
                [[ $kind == csv && $f == *.procs.csv ]] || files+=("$f")
            done
            head -n 1 "${files[0]}" > "$out"
            for f in "${files[@]}"; do tail -n +2 "$f" >> "$out"; done
        done
    done
    cp "$data/labels.json" "$work/one/" 2> /dev/null || true
    data=$work/one
fi

measure() {  # NAME ARGS...: run minerwatch ARGS, print its wall time and peak memory
    local name=$1
    shift
    /usr/bin/time -v -o "$work/time" "${mw[@]}" "$@" > /dev/null 2> "$work/err" || {
        cat "$work/err" >&2
        exit 1
    }
    local wall peak
    wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time")
    peak=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time")
    awk -v n="$name" -v w="$wall" -v k="$peak" 'BEGIN { printf "%-9s wall %s  peak %.2f GB\n", n, w, k / 1048576 }'
}

measure train train "$data/train" --models "$work/models"
measure score score "$data/train" --models "$work/models" --output "$work/scores.csv"
[ "${ONEFILE:-0}" = 1 ] && exit 0
measure evaluate evaluate --data "$data" --models "$work/models" --output "$work/evaluation"
