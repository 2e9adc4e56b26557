# The `search` CLI: the same image runs the dashboard, the workers and any one-off command.
#
# Base: python:3.11-slim rather than a pytorch/CUDA image. The Linux x86_64 torch wheels on PyPI carry their own
# CUDA runtime and cuDNN (the nvidia-* wheels), so a GPU worker needs only the host's driver, which the NVIDIA
# Container Toolkit mounts in; a pytorch/pytorch or nvidia/cuda base would add a second Python (conda) or a CUDA
# toolkit we never use. The one image also serves the CPU-only services (dashboard, data).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SEARCH_DATA_DIR=/data

# torch first, in its own layer: it is most of the image, and a code change then rebuilds only the last layers.
RUN pip install "torch>=2.1" "torchvision>=0.16"

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY bin ./bin
COPY search ./search
COPY models ./models
COPY studies ./studies
# postgres: the shared study store; proxy: grpcio for `search proxy` and grpc:// storage URLs.
RUN pip install ".[postgres,proxy]" && rm -rf /src

# Not root. /data (the dataset volume), /run/search-slots (the workers' slots volume, docker-compose.yml) and /work
# (runs/, exported files) belong to this user; a named volume mounted at /data or /run/search-slots starts with
# this ownership.
RUN useradd --create-home --uid 1000 search && mkdir -p /data /run/search-slots /work \
    && chown search:search /data /run/search-slots /work
USER search
WORKDIR /work

ENTRYPOINT ["search"]
CMD ["--help"]
