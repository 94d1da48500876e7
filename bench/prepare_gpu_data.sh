#!/usr/bin/env bash
# Build the git-ignored .gpu/ folder: exactly the data that bench/gpu_session.sh reads on the GPU machine, copied from
# the shared data folder (default ../shared/data), about 38 MB (the device tool carries at most 64 MiB with the tree):
#
#   bash bench/prepare_gpu_data.sh [SHARED_DATA]        # then run gpu_session.sh with carry: [".gpu"]
#
#   .gpu/data/cifar-10-batches-py/{test_batch,batches.meta}          31 MB   the CIFAR-10 run's test batch
#   .gpu/data/teachers/akamaster_pytorch_resnet_cifar10/resnet{56,20}-*.th   4.6 MB   teacher, and the tests' ResNet-20
#   .gpu/data/TU/{MUTAG,PROTEINS}/raw/                                 2.9 MB   the graph examples (acgkd_tu.py)
#
# gpu_session.sh gives .gpu/data to the CIFAR-10 run as --data-root (a partial copy: it is not exported to the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/data}
[ -f "$src/cifar-10-batches-py/test_batch" ] || { echo "prepare_gpu_data: no $src/cifar-10-batches-py/test_batch" >&2; exit 1; }
teachers=teachers/akamaster_pytorch_resnet_cifar10
rm -rf .gpu/data
mkdir -p .gpu/data/cifar-10-batches-py ".gpu/data/$teachers" .gpu/data/TU
cp "$src"/cifar-10-batches-py/{test_batch,batches.meta} .gpu/data/cifar-10-batches-py/
cp "$src/$teachers"/resnet56-4bfd9763.th "$src/$teachers"/resnet20-12fca82f.th ".gpu/data/$teachers/"
for name in MUTAG PROTEINS; do
  mkdir -p ".gpu/data/TU/$name"
  cp -r "$src/TU/$name/raw" ".gpu/data/TU/$name/"
done
(cd "$src" && sha256sum cifar-10-batches-py/test_batch cifar-10-batches-py/batches.meta "$teachers"/resnet56-4bfd9763.th \
  "$teachers"/resnet20-12fca82f.th) > .gpu/data/SHA256SUMS
(cd .gpu/data && sha256sum -c --quiet SHA256SUMS)
bytes=$(du -sb .gpu | cut -f1)
echo "prepare_gpu_data: .gpu/ holds $((bytes / 1000000)) MB"
[ "$bytes" -lt $((60 * 1024 * 1024)) ] || { echo "prepare_gpu_data: .gpu/ is over 60 MiB" >&2; exit 1; }
