#!/usr/bin/env bash
# tools/dist_train.sh CONFIG GPUS [args...]  (torchrun, as in mmpretrain;
# PYTHON=.venv/bin/python picks the interpreter; works without CUDA too)
CONFIG=$1
GPUS=$2
PORT=${PORT:-29500}
PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
${PYTHON:-python} -m torch.distributed.run --nnodes=${NNODES:-1} --node_rank=${NODE_RANK:-0} \
  --master_addr=${MASTER_ADDR:-127.0.0.1} --nproc_per_node=$GPUS \
  --master_port=$PORT "$(dirname "$0")/train.py" $CONFIG --launcher pytorch "${@:3}"
