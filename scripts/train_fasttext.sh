#!/usr/bin/env bash
# Trains the fastText model that the text_embedding runtime example serves (issue 13) with Debian's `fasttext`
# program (package `fasttext`), for people who prefer the command line. The examples do the same with the
# library on first run (runtimes::train_fasttext_model in examples/runtimes/fasttext_embedder.cpp) and the two
# produce the same bytes: same corpus, same settings (runtimes::FastTextTraining), one thread, fixed seed.
#
#   scripts/train_fasttext.sh [OUTPUT_DIR]     (default: $TMPDIR/modelpool-demo, the examples' cache directory)
#
# The corpus is examples/data/aesop.txt without its '#' comment lines, lower-cased, every byte other than
# [a-z0-9'], a line break or a non-ASCII (UTF-8) byte turned into a space (runtimes::fasttext_normalize): fastText
# splits words on white space only.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
text="$here/../examples/data/aesop.txt"
out_dir="${1:-${TMPDIR:-/tmp}/modelpool-demo}"
name="fasttext-aesop-skipgram-d48-b20000-e100-hs-v1" # runtimes::fasttext_model_name, without ".bin"

if ! command -v fasttext >/dev/null; then
    echo "train_fasttext.sh: the 'fasttext' program is missing; on Debian 12: apt-get install fasttext" >&2
    exit 1
fi
mkdir -p "$out_dir"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

grep -v '^#' "$text" | LC_ALL=C tr 'A-Z' 'a-z' | LC_ALL=C tr -c "a-z0-9'\n\200-\377" ' ' >"$scratch/corpus.txt"
# fastText reads its input file several times (it seeks), so the corpus must be a file, not a pipe.
fasttext skipgram -input "$scratch/corpus.txt" -output "$scratch/$name" \
    -dim 48 -bucket 20000 -minCount 1 -epoch 100 -lr 0.05 -ws 5 -minn 3 -maxn 6 -thread 1 -seed 1 -loss hs \
    -verbose 1
mv "$scratch/$name.bin" "$out_dir/$name.bin"
echo "wrote $out_dir/$name.bin"
