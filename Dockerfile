# syntax=docker/dockerfile:1
#
# One image per ONNX Runtime flavour, built from the same pyproject.toml:
#
#   docker build -t modelserve .                                  # target "runtime" (CPU ORT)
#   docker build --target worker-gpu -t modelserve-worker-gpu .   # the worker with onnxruntime-gpu
#
# The container runs `modelserve serve <service>`; docker-compose.yml names the service in
# `command`, e.g. `docker run modelserve gateway --port 8001`.
#
# Why a second target and not a build arg: `onnxruntime` and `onnxruntime-gpu` are two
# distributions of the same `onnxruntime` import package, so the GPU image must *replace* one
# with the other (and make the CUDA/cuDNN libraries loadable). That is a different set of
# steps, not a different package name, and a target keeps both variants buildable and
# cacheable side by side. Only the worker runs models, so only the worker needs the GPU image;
# gateway, router, registry and featurestore stay on the small CPU image.

# --- build: a virtual environment with the project and its pinned dependencies -------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Generated protobuf code is checked in under services/modelserve/proto, so no protoc here.
COPY pyproject.toml ./
COPY services ./services
# [postgres]: psycopg, so a registry can run on PostgreSQL (registry_database_url).
# [s3]: boto3, so registries and workers read artifacts pushed by reference as s3:// URIs.
RUN pip install ".[postgres,s3]"

# --- build-gpu: the same environment with onnxruntime swapped for onnxruntime-gpu ------------
FROM build AS build-gpu
# Empty = the onnxruntime version the CPU build resolved, so CPU and GPU images run the same ORT.
ARG ORT_VERSION=""
# [cuda,cudnn] pulls NVIDIA's CUDA 12 runtime and cuDNN 9 as pip wheels: python:3.11-slim has
# no CUDA. Only the kernel driver (libcuda) comes from the host, mounted by the NVIDIA
# container toolkit when compose reserves the GPU.
ARG ORT_GPU_EXTRAS="cuda,cudnn"
# Uninstall first: both distributions write the same onnxruntime/ files, and removing one
# after the other is installed would delete files the survivor needs. `pip check` will report
# "modelserve requires onnxruntime" afterwards; the import name is provided by onnxruntime-gpu.
RUN ver="${ORT_VERSION:-$(python -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')}" \
 && pip uninstall -y onnxruntime \
 && pip install "onnxruntime-gpu[${ORT_GPU_EXTRAS}]==${ver}" \
 && python -c 'import onnxruntime as o; assert "CUDAExecutionProvider" in o.get_available_providers()'
# NVML's bindings for the worker's GPU series: the `gpu` extra of pyproject.toml, named here
# because `pip install .[gpu]` would resolve modelserve's onnxruntime requirement again.
RUN pip install "nvidia-ml-py>=12"
# ORT dlopen()s libcudart/libcublas/libcudnn by soname when the CUDA provider loads; glibc
# fixes LD_LIBRARY_PATH at process start, so register the wheels' lib folders with ldconfig.
RUN find /opt/venv/lib/python3.11/site-packages/nvidia -maxdepth 3 -type d -name lib \
        > /opt/venv/nvidia-libs.conf \
 && test -s /opt/venv/nvidia-libs.conf

# --- base: what every runtime image shares -------------------------------------------------
FROM python:3.11-slim AS base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A fixed uid/gid so volume ownership is predictable across rebuilds and hosts.
RUN groupadd --system --gid 10001 modelserve \
 && useradd --system --uid 10001 --gid modelserve --home-dir /var/lib/modelserve \
        --shell /usr/sbin/nologin modelserve \
 && mkdir -p /var/lib/modelserve/registry /var/lib/modelserve/featurestore \
        /var/lib/modelserve/worker /var/lib/modelserve/secrets \
 && chown -R modelserve:modelserve /var/lib/modelserve
# Named volumes mounted on these folders start as a copy of them, owner included, so the
# non-root user can write its SQLite files and artifacts there (and compose's one-shot `init`
# its certificates and tokens into secrets/).
WORKDIR /var/lib/modelserve
# Exec form: the Python process is PID 1 and receives SIGTERM itself; the runtime's handler
# turns it into the drain of RELIABILITY.md (NOT_SERVING, deregister, ~11 s, stop(grace=30)).
# The orchestrator must wait longer than that: compose sets stop_grace_period 45s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["modelserve", "serve"]
CMD ["--help"]
# No HEALTHCHECK: every service serves grpc.health.v1, and the probes that matter use it
# directly (Consul's gRPC check decides routing, Kubernetes uses native `grpc:` probes). A
# Docker HEALTHCHECK would be a third prober needing a client binary or a Python start per
# probe, and its status feeds nothing that routes traffic.

# --- worker-gpu: the worker's image (onnxruntime-gpu); falls back to CPU without a GPU -------
FROM base AS worker-gpu
COPY --from=build-gpu /opt/venv /opt/venv
RUN cp /opt/venv/nvidia-libs.conf /etc/ld.so.conf.d/nvidia-pip-wheels.conf && ldconfig
# What the NVIDIA container toolkit mounts into the container: the CUDA driver API (compute)
# and nvidia-smi (utility). Which GPUs are visible is the compose device reservation's job.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER modelserve:modelserve

# --- runtime (default, last): gateway, router, registry, featurestore; worker on CPU ----------
FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
USER modelserve:modelserve
