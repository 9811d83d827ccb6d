# poolctl's image: the worker (default command), the CLI (`poolctl ...`) and the built-in balancer
# (`python -m poolctl.balancer ...`). Used by docker-compose.yml; see README "Production".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    POOLCTL_STATE_DIR=/var/lib/poolctl

WORKDIR /src
COPY . .
RUN pip install --no-cache-dir . \
    && useradd --system --create-home --home-dir /var/lib/poolctl poolctl \
    && chown -R poolctl /var/lib/poolctl

USER poolctl
WORKDIR /var/lib/poolctl
# graceful stop: the worker finishes in-flight tasks on SIGTERM (docker stop sends it)
STOPSIGNAL SIGTERM
CMD ["python", "-m", "poolctl.worker"]
