#!/usr/bin/env bash
# Run here (the development machine) before the device tool: copies the header-only dependencies the GPU machine's
# image lacks (Eigen, Boost.Hana) into .device/include, which .gitignore ignores; name `.device` in the device tool's
# `carry` and run tests/cuda/device_check.sh there. About 13 MB.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
rm -rf .device/include
mkdir -p .device/include/boost
cp -r /usr/include/eigen3 .device/include/
cp -r /usr/include/boost/hana /usr/include/boost/hana.hpp .device/include/boost/
du -sh .device/include
