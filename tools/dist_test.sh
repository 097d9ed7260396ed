#!/usr/bin/env bash
# tools/dist_test.sh CONFIG CHECKPOINT GPUS [args...]
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
PORT=${PORT:-29500}
PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
${PYTHON:-python} -m torch.distributed.run --nnodes=${NNODES:-1} --node_rank=${NODE_RANK:-0} \
  --master_addr=${MASTER_ADDR:-127.0.0.1} --nproc_per_node=$GPUS \
  --master_port=$PORT "$(dirname "$0")/test.py" $CONFIG $CHECKPOINT --launcher pytorch "${@:4}"
