# poolctl's image: the worker (default command), the CLI (`poolctl ...`) and the built-in balancer
# (`python -m poolctl.balancer ...`). Used by docker-compose.yml; see README "Production".
#
# Two stages: the first compiles the built-in balancer's hot path with mypyc (`make native`: about 40 %
# less CPU per request, docs/benchmarks.md), the second installs poolctl with that build and uvloop (the
# `fast` extra) and carries no compiler. A build of other sources is never used (balancer/native.py).
FROM python:3.11-slim AS native
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN rm -rf balancer/_native .venv \
    && pip install --no-cache-dir -e '.[dev]' \
    && python -c "from poolctl.balancer.native import build; build()"

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    POOLCTL_STATE_DIR=/var/lib/poolctl

WORKDIR /src
COPY --from=native /src /src
RUN pip install --no-cache-dir '.[fast]' \
    && python -c "from poolctl.balancer import native; assert native.active(), 'compiled hot path not used'" \
    && cd / && rm -rf /src \
    && useradd --system --create-home --home-dir /var/lib/poolctl poolctl \
    && chown -R poolctl /var/lib/poolctl

USER poolctl
WORKDIR /var/lib/poolctl
# graceful stop: the worker finishes in-flight tasks on SIGTERM (docker stop sends it)
STOPSIGNAL SIGTERM
CMD ["python", "-m", "poolctl.worker"]
